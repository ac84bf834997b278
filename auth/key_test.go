package auth

import (
	"encoding/hex"
	"regexp"
	"testing"
)

func TestGenerateKey(t *testing.T) {
	t.Parallel()
	format := regexp.MustCompile(`^[0-9a-f]{40}$`)
	seen := map[string]bool{}
	prefixes := map[byte]bool{}
	for i := 0; i < 1000; i++ {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if !format.MatchString(k) {
			t.Fatalf("GenerateKey() = %q, want 40 lowercase hex characters", k)
		}
		if !WellFormed(k) {
			t.Fatalf("WellFormed(%q) = false for a generated key", k)
		}
		if seen[k] {
			t.Fatalf("GenerateKey() returned %q twice", k)
		}
		seen[k] = true
		prefixes[k[0]] = true
	}
	if len(prefixes) != 16 {
		t.Errorf("1000 keys start with only %d distinct characters, want all 16", len(prefixes))
	}
}

func TestWellFormed(t *testing.T) {
	t.Parallel()
	cases := []struct {
		key  string
		want bool
	}{
		{"14ac5499cfdd2bb2859e4476d2e5b1d2bad079bf", true},
		{"0000000000000000000000000000000000000000", true},
		{"14AC5499CFDD2BB2859E4476D2E5B1D2BAD079BF", false}, // upper case
		{"14ac5499cfdd2bb2859e4476d2e5b1d2bad079b", false},  // 39
		{"14ac5499cfdd2bb2859e4476d2e5b1d2bad079bf0", false},
		{"14ac5499cfdd2bb2859e4476d2e5b1d2bad079bg", false},
		{" 4ac5499cfdd2bb2859e4476d2e5b1d2bad079bf", false},
		{"", false},
		{"14ac5499cfdd2bb2859e4476d2e5b1d2bad079b\x00", false},
		{"14ac5499cfdd2bb2859e4476d2e5b1d2bad079\u00e9", false}, // 40 bytes, not hex
	}
	for _, c := range cases {
		if got := WellFormed(c.key); got != c.want {
			t.Errorf("WellFormed(%q) = %v, want %v", c.key, got, c.want)
		}
	}
}

func TestHashKey(t *testing.T) {
	t.Parallel()
	// SHA-256("abc"), FIPS 180-2 appendix B.1.
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := hex.EncodeToString(HashKey("abc")); got != want {
		t.Errorf("HashKey(abc) = %s, want %s", got, want)
	}
	if n := len(HashKey("14ac5499cfdd2bb2859e4476d2e5b1d2bad079bf")); n != 32 {
		t.Errorf("HashKey length %d, want 32", n)
	}
}
