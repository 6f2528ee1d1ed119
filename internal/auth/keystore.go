package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/tokengate/tokengate/internal/config"
)

// reloadEvery is the least time between two checks of the store file.
const reloadEvery = time.Second

// keyStore serves gateway-key lookups from an immutable snapshot of the
// store file, reloaded when the file changes (checked at most once per
// reloadEvery, by whichever request comes first). A store that fails to
// load keeps the last good snapshot.
type keyStore struct {
	path      string
	apps      map[string]*config.App // by name
	log       *slog.Logger
	now       func() time.Time
	snap      atomic.Pointer[keySnapshot]
	nextCheck atomic.Int64 // unix nanoseconds
}

type keySnapshot struct {
	file  os.FileInfo // nil when the file did not exist
	byKey map[string]*keyEntry
}

type keyEntry struct {
	sum     []byte
	revoked time.Time
	app     string
	caller  *Caller // nil when app is not registered
}

func newKeyStore(path string, apps map[string]*config.App, log *slog.Logger, now func() time.Time) (*keyStore, error) {
	ks := &keyStore{path: path, apps: apps, log: log, now: now}
	snap, err := ks.load()
	if err != nil {
		return nil, err
	}
	if snap.file == nil {
		log.Warn("auth: gateway key store does not exist yet; create keys with \"tokengate keys create\"", slog.String("file", path))
	}
	ks.snap.Store(snap)
	ks.nextCheck.Store(now().Add(reloadEvery).UnixNano())
	return ks, nil
}

// load reads the store into a new snapshot.
func (ks *keyStore) load() (*keySnapshot, error) {
	fi, err := os.Stat(ks.path)
	if errors.Is(err, fs.ErrNotExist) {
		return &keySnapshot{byKey: map[string]*keyEntry{}}, nil
	}
	if err != nil {
		return nil, err
	}
	st, err := readStore(ks.path)
	if err != nil {
		return nil, err
	}
	snap := &keySnapshot{file: fi, byKey: make(map[string]*keyEntry, len(st.Keys))}
	for _, r := range st.Keys {
		sum, _ := hex.DecodeString(r.SHA256) // checked by decodeStore
		e := &keyEntry{sum: sum, app: r.App}
		if r.Revoked != nil {
			e.revoked = *r.Revoked
		}
		if app := ks.apps[r.App]; app != nil {
			e.caller = &Caller{Method: MethodGatewayKey, Issuer: ks.path, App: app, KeyPrefix: r.Prefix}
		}
		snap.byKey[r.Prefix] = e
	}
	return snap, nil
}

// current returns the snapshot, first reloading it if the file changed.
func (ks *keyStore) current() *keySnapshot {
	snap := ks.snap.Load()
	now := ks.now().UnixNano()
	next := ks.nextCheck.Load()
	// A check is due once next has passed, or if the wall clock stepped
	// back so far that next is more than reloadEvery ahead.
	due := now >= next || next-now > int64(reloadEvery)
	if !due || !ks.nextCheck.CompareAndSwap(next, now+int64(reloadEvery)) {
		return snap
	}
	fi, err := os.Stat(ks.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if snap.file == nil {
			return snap
		}
		// Fail closed: a deleted store accepts no keys.
		ks.log.Warn("auth: gateway key store was removed; no gateway keys are accepted", slog.String("file", ks.path))
		snap = &keySnapshot{byKey: map[string]*keyEntry{}}
		ks.snap.Store(snap)
		return snap
	case err != nil:
		ks.log.Error("auth: cannot stat gateway key store; keeping the keys loaded before", slog.String("file", ks.path), slog.String("error", err.Error()))
		return snap
	case snap.file != nil && os.SameFile(snap.file, fi) && fi.ModTime().Equal(snap.file.ModTime()) && fi.Size() == snap.file.Size():
		return snap
	}
	fresh, err := ks.load()
	if err != nil {
		ks.log.Error("auth: cannot reload gateway key store; keeping the keys loaded before", slog.String("file", ks.path), slog.String("error", err.Error()))
		return snap
	}
	ks.log.Info("auth: gateway key store reloaded", slog.String("file", ks.path), slog.Int("keys", len(fresh.byKey)))
	ks.snap.Store(fresh)
	return fresh
}

// lookup authenticates a gateway key. Error messages name the key by its
// public prefix only.
func (ks *keyStore) lookup(key string) (*Caller, error) {
	prefix, _ := parseKey(key)
	e := ks.current().byKey[prefix]
	if e == nil {
		return nil, unauthorized(CodeInvalidAPIKey, "the gateway key is not valid: check it was copied whole, or ask the gateway operator for a new one", false, errGatewayKey)
	}
	sum := sha256.Sum256(stringBytes(key))
	if subtle.ConstantTimeCompare(sum[:], e.sum) != 1 {
		return nil, unauthorized(CodeInvalidAPIKey, "the gateway key is not valid: check it was copied whole, or ask the gateway operator for a new one", false, errGatewayKey)
	}
	if !e.revoked.IsZero() {
		return nil, unauthorized(CodeInvalidAPIKey, "gateway key "+keyScheme+prefix+"_... was revoked: ask the gateway operator for a new one", false, errGatewayKey)
	}
	if e.caller == nil {
		return nil, forbidden(CodeAppNotRegistered, "gateway key "+keyScheme+prefix+"_... belongs to app "+safeID(e.app)+", which is not registered under apps in the gateway config", errUnknownApp)
	}
	return e.caller, nil
}
