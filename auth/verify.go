package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smtpgw/smtpgw/store"
)

// DefaultCacheTTL is how long a Verifier caches a key lookup when
// Config.CacheTTL is zero (SPEC §8 auth.cache_ttl).
const DefaultCacheTTL = 5 * time.Second

const (
	// maxCacheEntries caps the cache of found keys; maxMissingEntries caps
	// the cache of hashes no key has, which an attacker can fill at will.
	maxCacheEntries   = 100_000
	maxMissingEntries = 10_000
	// touchInterval: a key's last use is written at most this often.
	touchInterval = time.Minute
	// flushDelay: after the first use to record, the writer waits this long
	// so that the uses of other keys join the same batch.
	flushDelay = time.Second
	// touchTimeout bounds one batch of last-used writes.
	touchTimeout = 10 * time.Second
)

// Config configures a Verifier.
type Config struct {
	// CacheTTL is how long a key looked up in the store is trusted without
	// asking again: the time other nodes may keep accepting a revoked key.
	// 0 means DefaultCacheTTL; a negative value disables the cache.
	CacheTTL time.Duration
	// Logger receives failures of the background last-used writer. Nil
	// discards them.
	Logger *slog.Logger
	// MaxFailures is how many failed authentications one client address
	// (IPv6: its /64) may make per FailureWindow, over SMTP AUTH, the HTTP
	// API, the console and /metrics together, before it is refused
	// without its key being looked at (SMTP 421 4.7.0, HTTP 429). 0 means
	// DefaultMaxFailures; a negative value disables the limit.
	MaxFailures int
	// FailureWindow is the period MaxFailures counts over; 0 means
	// DefaultFailureWindow.
	FailureWindow time.Duration
}

// Defaults of the failed-authentication budget (SPEC §4
// smtp.max_auth_failures, smtp.auth_failure_window).
const (
	DefaultMaxFailures   = 5
	DefaultFailureWindow = 5 * time.Minute
)

// Verifier checks API keys presented over SMTP AUTH or the HTTP API. It is
// safe for concurrent use. Call Close when done: it stops the background
// writer of last-used times after writing what is pending.
type Verifier struct {
	st    store.Store
	ttl   time.Duration // <= 0: no cache
	log   *slog.Logger
	decoy *store.Key      // checked instead of a key that does not exist
	fails *FailureLimiter // the failed-authentication budget per client address

	mu      sync.RWMutex
	gen     uint64                 // incremented by every eviction
	keys    map[[32]byte]cached    // by SHA-256 of the key
	missing map[[32]byte]time.Time // hashes no key has, until the time given
	subs    subCache               // subaccount statuses (subaccount.go)

	touchMu sync.Mutex
	touched map[string]time.Time // key id → last use recorded (pruned after touchInterval)
	pending map[string]use       // key id → last use not yet written
	wake    chan struct{}        // capacity 1: pending is not empty
	stop    chan struct{}        // closed by Close
	done    chan struct{}        // closed when the writer returned
	closed  atomic.Bool
	once    sync.Once

	flushDelay time.Duration    // flushDelay; tests shorten it
	now        func() time.Time // time.Now; tests move it to check expiry
}

// use is one recorded use of a key.
type use struct {
	at time.Time
	ip netip.Addr
}

// cached is a cache entry: a key as stored, trusted until expires.
type cached struct {
	key     *store.Key
	expires time.Time
}

// NewVerifier returns a Verifier looking keys up in st and starts its
// background last-used writer.
func NewVerifier(st store.Store, cfg Config) *Verifier {
	ttl := cfg.CacheTTL
	if ttl == 0 {
		ttl = DefaultCacheTTL
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxFails, window := cfg.MaxFailures, cfg.FailureWindow
	if maxFails == 0 {
		maxFails = DefaultMaxFailures
	}
	if window <= 0 {
		window = DefaultFailureWindow
	}
	v := &Verifier{
		fails:      NewFailureLimiter(maxFails, window), // maxFails < 0 disables it
		st:         st,
		ttl:        ttl,
		log:        log,
		decoy:      newDecoy(),
		keys:       make(map[[32]byte]cached),
		missing:    make(map[[32]byte]time.Time),
		touched:    make(map[string]time.Time),
		pending:    make(map[string]use),
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		flushDelay: flushDelay,
		now:        time.Now,
	}
	go v.run()
	return v
}

// newDecoy returns a key no presented key can match (its hash is random),
// shaped like a restricted key so that checking it costs what checking a
// real one does.
func newDecoy() *store.Key {
	h := make([]byte, sha256.Size)
	// crypto/rand.Read never returns an error (Go 1.24+).
	_, _ = rand.Read(h)
	return &store.Key{
		Hash:       h,
		Grants:     slices.Clone(EnforcedGrants),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")},
	}
}

// Verify checks key for SMTP submission: it must exist, not be revoked nor
// expired, allow client, and hold smtp/inject. See VerifyGrant.
func (v *Verifier) Verify(ctx context.Context, key string, client netip.Addr) (*Identity, error) {
	return v.VerifyGrant(ctx, key, client, GrantSMTPInject)
}

// VerifyGrant checks that key exists, is not revoked nor expired, allows
// the client address and holds grant ("" requires no grant: any valid
// key). A refused key gives an [*Error] wrapping ErrUnknownKey,
// ErrRevokedKey, ErrExpiredKey, ErrIPNotAllowed or ErrMissingGrant, checked
// in that order. A store failure
// is returned wrapped (errors.Is(err, store.ErrUnavailable), deadline...),
// never as [*Error]: the caller answers with a temporary failure.
//
// Every caller shares one failed-authentication budget per client address
// (Config.MaxFailures): a client that used it up gets a [*ThrottledError]
// before its key is looked at, and each refusal of the key itself
// (unknown, revoked, expired, address not allowed — not a missing grant,
// which a valid key can meet) spends one failure.
func (v *Verifier) VerifyGrant(ctx context.Context, key string, client netip.Addr, grant string) (*Identity, error) {
	if d, blocked := v.Blocked(client); blocked {
		return nil, &ThrottledError{IP: client, RetryAfter: d}
	}
	if !WellFormed(key) {
		// The format is public: nothing to hide by looking it up.
		v.fails.Fail(client)
		return nil, &Error{Reason: ErrUnknownKey, Grant: grant, IP: client}
	}
	h := sha256.Sum256([]byte(key))
	k, err := v.lookup(ctx, h)
	if err != nil {
		return nil, fmt.Errorf("verify key: %w", err)
	}
	id, err := v.check(k, h, client, grant)
	if err != nil && !errors.Is(err, ErrMissingGrant) {
		v.fails.Fail(client)
	}
	return v.activeSubaccount(ctx, id, err)
}

// Blocked reports whether client used up its failed-authentication budget,
// and if so how long until it may try again.
func (v *Verifier) Blocked(client netip.Addr) (retryAfter time.Duration, blocked bool) {
	if !v.fails.Blocked(client) {
		return 0, false
	}
	return v.fails.RetryAfter(client), true
}

// Fail spends one failure of client's budget for a failure the caller
// found itself (an SMTP AUTH user name it refuses, say); VerifyGrant
// counts its own refusals. It reports whether client is now blocked.
func (v *Verifier) Fail(client netip.Addr) bool {
	return v.fails.Fail(client)
}

// VerifyHash is VerifyGrant for a key known only by its SHA-256 (as
// [HashKey] returns it and store.Key.Hash holds it): the web console keeps
// the hash of the key a session signed in with, never the key, and checks
// it again on every request. It uses the same cache, so a key revoked or
// changed through this node's [Manager] is refused at once, on other nodes
// within the cache TTL. A hash that is not 32 bytes is an unknown key.
func (v *Verifier) VerifyHash(ctx context.Context, hash []byte, client netip.Addr, grant string) (*Identity, error) {
	if len(hash) != sha256.Size {
		return nil, &Error{Reason: ErrUnknownKey, Grant: grant, IP: client}
	}
	h := [32]byte(hash)
	k, err := v.lookup(ctx, h)
	if err != nil {
		return nil, fmt.Errorf("verify key: %w", err)
	}
	id, err := v.check(k, h, client, grant)
	return v.activeSubaccount(ctx, id, err)
}

// check decides on a looked-up key k (nil: none has hash h). Every check is
// evaluated, on the decoy key when k is nil, before the first failing one
// is reported, so an unknown key does the same work as a known key refused
// for its address.
func (v *Verifier) check(k *store.Key, h [32]byte, client netip.Addr, grant string) (*Identity, error) {
	found := k != nil
	if !found {
		k = v.decoy
	}
	now := v.now()
	match := subtle.ConstantTimeCompare(k.Hash, h[:]) == 1 && found
	revoked := !k.RevokedAt.IsZero()
	// The expiry is checked against the clock every time, also for a key
	// from the cache: the cache TTL never extends a key's life.
	expired := k.Expired(now)
	ipOK := IPAllowed(k.AllowedIPs, client)
	grantOK := grant == "" || slices.Contains(k.Grants, grant)
	refuse := func(reason error) (*Identity, error) {
		return nil, &Error{Reason: reason, KeyID: k.ID, ShortKey: k.ShortKey, Grant: grant, IP: client}
	}
	switch {
	case !match:
		return nil, &Error{Reason: ErrUnknownKey, Grant: grant, IP: client}
	case revoked:
		return refuse(ErrRevokedKey)
	case expired:
		return refuse(ErrExpiredKey)
	case !ipOK:
		return refuse(ErrIPNotAllowed)
	case !grantOK:
		return refuse(ErrMissingGrant)
	}
	v.recordUse(k.ID, now, client)
	return &Identity{
		KeyID:      k.ID,
		ShortKey:   k.ShortKey,
		Label:      k.Label,
		Subaccount: k.Subaccount,
		Grants:     slices.Clone(k.Grants),
	}, nil
}

// lookup returns the key with hash h, nil if there is none, from the cache
// or else the store.
func (v *Verifier) lookup(ctx context.Context, h [32]byte) (*store.Key, error) {
	var gen uint64
	if v.ttl > 0 {
		now := time.Now()
		v.mu.RLock()
		e, hit := v.keys[h]
		until, miss := v.missing[h]
		gen = v.gen
		v.mu.RUnlock()
		if hit && now.Before(e.expires) {
			return e.key, nil
		}
		if miss && now.Before(until) {
			return nil, nil
		}
	}
	k, err := v.st.KeyByHash(ctx, h[:])
	if errors.Is(err, store.ErrNotFound) {
		k, err = nil, nil
	}
	if err != nil {
		return nil, err
	}
	if v.ttl > 0 {
		v.put(h, k, gen)
	}
	return k, nil
}

// put caches the result of a store lookup of h made while the eviction
// generation was gen. If an eviction happened since, the result may predate
// it (a revocation) and is not cached.
func (v *Verifier) put(h [32]byte, k *store.Key, gen uint64) {
	now := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gen != gen {
		return
	}
	if k == nil {
		if len(v.missing) >= maxMissingEntries {
			sweep(v.missing, now, func(t time.Time) time.Time { return t })
		}
		v.missing[h] = now.Add(v.ttl)
		return
	}
	if len(v.keys) >= maxCacheEntries {
		sweep(v.keys, now, func(e cached) time.Time { return e.expires })
	}
	v.keys[h] = cached{key: k, expires: now.Add(v.ttl)}
	delete(v.missing, h)
}

// sweep deletes the expired entries of m; if none was, it deletes one
// entry (Go's map iteration order makes it an arbitrary one) to make room.
func sweep[V any](m map[[32]byte]V, now time.Time, expires func(V) time.Time) {
	n := len(m)
	for h, e := range m {
		if !now.Before(expires(e)) {
			delete(m, h)
		}
	}
	if len(m) < n {
		return
	}
	for h := range m {
		delete(m, h)
		return
	}
}

// Evict drops the cached lookups of the key with that id, so that a change
// to it (revocation, allowed IPs, grants) applies to the next
// verification on this node. Lookups in flight are not cached afterwards.
func (v *Verifier) Evict(keyID string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gen++
	for h, e := range v.keys {
		if e.key.ID == keyID {
			delete(v.keys, h)
		}
	}
}

// forget drops a cached "no such key" for hash h: Manager.Create calls it
// for the key it made.
func (v *Verifier) forget(h []byte) {
	var k [32]byte
	copy(k[:], h)
	v.mu.Lock()
	defer v.mu.Unlock()
	v.gen++
	delete(v.missing, k)
}

// recordUse notes that key id was used at t from client address ip, unless
// a use of it was noted less than touchInterval ago, and wakes the writer.
func (v *Verifier) recordUse(id string, t time.Time, ip netip.Addr) {
	if v.closed.Load() {
		return
	}
	v.touchMu.Lock()
	last, ok := v.touched[id]
	if ok && t.Sub(last) < touchInterval {
		v.touchMu.Unlock()
		return
	}
	v.touched[id] = t
	v.pending[id] = use{at: t, ip: ip}
	v.touchMu.Unlock()
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

// run is the background writer: when uses are pending it waits flushDelay
// for more, then writes them. On Close it writes what is pending and
// returns.
func (v *Verifier) run() {
	defer close(v.done)
	for {
		select {
		case <-v.stop:
			v.flush()
			return
		case <-v.wake:
		}
		t := time.NewTimer(v.flushDelay)
		select {
		case <-v.stop:
			t.Stop()
			v.flush()
			return
		case <-t.C:
		}
		v.flush()
	}
}

// flush writes the pending last uses with store.TouchKey and forgets
// uses older than touchInterval. A failed write is logged and dropped: the
// next use after touchInterval records it again.
func (v *Verifier) flush() {
	v.touchMu.Lock()
	batch := v.pending
	v.pending = make(map[string]use)
	now := time.Now()
	for id, t := range v.touched {
		if now.Sub(t) >= touchInterval {
			delete(v.touched, id)
		}
	}
	v.touchMu.Unlock()
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), touchTimeout)
	defer cancel()
	failed := 0
	var firstErr error
	for id, u := range batch {
		if err := v.st.TouchKey(ctx, id, u.at, u.ip); err != nil {
			if failed == 0 {
				firstErr = err
			}
			failed++
		}
	}
	if failed > 0 {
		v.log.Warn("record key last use", "keys", len(batch), "failed", failed, "err", firstErr)
	}
}

// Close stops the background writer after it wrote the pending last-used
// times. Verification keeps working afterwards, without recording use. Safe
// to call more than once.
func (v *Verifier) Close() {
	v.once.Do(func() {
		v.closed.Store(true)
		close(v.stop)
	})
	<-v.done
}
