package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// KeyLen is the length of an API key: 40 lowercase hex characters (160 bits
// from crypto/rand), the format of SparkPost's keys.
const KeyLen = 40

// ShortKeyLen is how many leading characters of a key are stored and shown
// (store.Key.ShortKey) so admins can tell keys apart.
const ShortKeyLen = 4

// GenerateKey returns a new API key: 40 lowercase hex characters from
// crypto/rand.
func GenerateKey() (string, error) {
	var b [KeyLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// HashKey returns the SHA-256 of key, the value stored (store.Key.Hash) and
// looked up instead of the key.
func HashKey(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// WellFormed reports whether key has the format of an API key: exactly 40
// lowercase hex characters. Keys are generated lowercase; upper case is not
// accepted, so a key has exactly one spelling.
func WellFormed(key string) bool {
	if len(key) != KeyLen {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
