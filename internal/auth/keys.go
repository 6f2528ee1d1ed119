package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Gateway keys look like tgk_<prefix>_<secret>: the prefix (8 characters)
// is public and names the key in logs, listings and revocations; the secret
// is 32 random bytes. Both use lower-case base32 so a double-click selects
// the whole key. The store keeps only sha256(key).
const (
	keyScheme    = "tgk_"
	keyPrefixLen = 8
	keySecretLen = 52 // base32 of 32 bytes, unpadded
	keyLen       = len(keyScheme) + keyPrefixLen + 1 + keySecretLen
	// MaxActiveKeys is how many unrevoked keys one app may hold: two, so a
	// key can be rotated without downtime.
	MaxActiveKeys = 2
)

var keyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Sentinel errors of the key store functions.
var (
	// ErrKeyLimit means the app already has MaxActiveKeys active keys.
	ErrKeyLimit = errors.New("too many active keys")
	// ErrKeyNotFound means no key in the store has the given prefix.
	ErrKeyNotFound = errors.New("no such key")
	// ErrKeyRevoked means the key was already revoked.
	ErrKeyRevoked = errors.New("key already revoked")
	// ErrStoreLocked means another process holds the store's lock file.
	ErrStoreLocked = errors.New("key store is locked")
)

// KeyInfo describes a gateway key without its secret.
type KeyInfo struct {
	// Prefix is the key's public part (tgk_<Prefix>_...).
	Prefix string
	// App is the registered app name the key authenticates as.
	App string
	// Created is when the key was issued.
	Created time.Time
	// Revoked is when it was revoked; zero while active.
	Revoked time.Time
}

// Active reports whether the key has not been revoked.
func (k KeyInfo) Active() bool { return k.Revoked.IsZero() }

// storeFile is the JSON layout of identity.gateway_keys.file.
type storeFile struct {
	Version int           `json:"version"`
	Keys    []storeRecord `json:"keys"`
}

type storeRecord struct {
	Prefix  string     `json:"prefix"`
	SHA256  string     `json:"sha256"` // hex sha256 of the whole key
	App     string     `json:"app"`
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

func (r storeRecord) info() KeyInfo {
	k := KeyInfo{Prefix: r.Prefix, App: r.App, Created: r.Created}
	if r.Revoked != nil {
		k.Revoked = *r.Revoked
	}
	return k
}

// CreateKey issues a new key for app and records its hash in the store at
// path (created, mode 0600, if missing). The key is returned once and
// stored nowhere. An app may hold MaxActiveKeys active keys (ErrKeyLimit).
// Whether app is registered is not checked here: an unregistered app's key
// is refused at request time. CreateKey and RevokeKey may run concurrently,
// in this process or others: a lock file (path + ".lock") serializes them,
// and the store is replaced atomically so running gateways never read a
// partial file.
func CreateKey(path, app string, now time.Time) (key string, err error) {
	if !validAppName(app) {
		return "", fmt.Errorf("app name %q: use letters, digits, '-', '_' and '.'", app)
	}
	unlock, err := lockStore(path)
	if err != nil {
		return "", err
	}
	defer unlock()
	st, err := readStore(path)
	if err != nil {
		return "", err
	}
	var active []string
	for _, r := range st.Keys {
		if r.App == app && r.Revoked == nil {
			active = append(active, r.Prefix)
		}
	}
	if len(active) >= MaxActiveKeys {
		return "", fmt.Errorf("%w: app %q already has %d active keys (%s): revoke one first with \"tokengate keys revoke <prefix>\"",
			ErrKeyLimit, app, len(active), strings.Join(active, ", "))
	}
	var prefix string
	for tries := 0; prefix == ""; tries++ {
		if tries == 10 {
			return "", errors.New("could not draw an unused key prefix")
		}
		p := randomString(5)[:keyPrefixLen]
		if !st.hasPrefix(p) {
			prefix = p
		}
	}
	key = keyScheme + prefix + "_" + randomString(32)
	sum := sha256.Sum256([]byte(key))
	st.Keys = append(st.Keys, storeRecord{Prefix: prefix, SHA256: hex.EncodeToString(sum[:]), App: app, Created: now.UTC()})
	if err := writeStore(path, st); err != nil {
		return "", err
	}
	return key, nil
}

// RevokeKey marks the key with the given prefix (with or without the tgk_
// scheme) revoked at now. Running gateways stop accepting it within about
// a second.
func RevokeKey(path, prefix string, now time.Time) error {
	prefix = strings.TrimSuffix(strings.TrimPrefix(prefix, keyScheme), "_")
	unlock, err := lockStore(path)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := readStore(path)
	if err != nil {
		return err
	}
	for i := range st.Keys {
		r := &st.Keys[i]
		if r.Prefix != prefix {
			continue
		}
		if r.Revoked != nil {
			return fmt.Errorf("%w: %s was revoked at %s", ErrKeyRevoked, prefix, r.Revoked.Format(time.RFC3339))
		}
		t := now.UTC()
		r.Revoked = &t
		return writeStore(path, st)
	}
	return fmt.Errorf("%w: %q (see \"tokengate keys list\")", ErrKeyNotFound, prefix)
}

// ListKeys returns every key in the store, revoked ones included, in the
// order they were created. A missing store has no keys.
func ListKeys(path string) ([]KeyInfo, error) {
	st, err := readStore(path)
	if err != nil {
		return nil, err
	}
	out := make([]KeyInfo, 0, len(st.Keys))
	for _, r := range st.Keys {
		out = append(out, r.info())
	}
	return out, nil
}

func (s *storeFile) hasPrefix(p string) bool {
	for _, r := range s.Keys {
		if r.Prefix == p {
			return true
		}
	}
	return false
}

// randomString returns n random bytes in keyEncoding.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return keyEncoding.EncodeToString(b)
}

// parseKey splits a gateway key into its prefix; ok is false when s does
// not have the gateway key format (for example an Azure api-key).
func parseKey(s string) (prefix string, ok bool) {
	if len(s) != keyLen || !strings.HasPrefix(s, keyScheme) || s[len(keyScheme)+keyPrefixLen] != '_' {
		return "", false
	}
	for i := len(keyScheme); i < len(s); i++ {
		c := s[i]
		if i == len(keyScheme)+keyPrefixLen {
			continue
		}
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return "", false
		}
	}
	return s[len(keyScheme) : len(keyScheme)+keyPrefixLen], true
}

func validAppName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// readStore reads and checks the store; a missing file is an empty store.
func readStore(path string) (*storeFile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &storeFile{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("key store: %w", err)
	}
	return decodeStore(b, path)
}

func decodeStore(b []byte, path string) (*storeFile, error) {
	var st storeFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("key store %s: %w", path, err)
	}
	if st.Version != 1 {
		return nil, fmt.Errorf("key store %s: unsupported version %d", path, st.Version)
	}
	seen := map[string]bool{}
	for i, r := range st.Keys {
		if len(r.Prefix) != keyPrefixLen || seen[r.Prefix] || len(r.SHA256) != 2*sha256.Size || r.App == "" {
			return nil, fmt.Errorf("key store %s: keys[%d] is not a valid record", path, i)
		}
		if _, err := hex.DecodeString(r.SHA256); err != nil {
			return nil, fmt.Errorf("key store %s: keys[%d].sha256 is not hex", path, i)
		}
		seen[r.Prefix] = true
	}
	return &st, nil
}

// writeStore replaces the store atomically: a reader sees the old file or
// the new one, never a partial write.
func writeStore(path string, st *storeFile) error {
	st.Version = 1
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this is a no-op
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("key store: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("key store: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("key store: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("key store: %w", err)
	}
	if d, err := os.Open(dir); err == nil { // persist the rename; best effort
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Lock-file timing: a writer waits up to lockWait for another
// "tokengate keys" command, and breaks a lock older than lockStale (left by
// a crashed process).
const (
	lockWait  = 5 * time.Second
	lockStale = 30 * time.Second
)

// lockStore serializes writers of the store across processes with an
// O_EXCL lock file next to it, so two concurrent "keys create" cannot lose
// one another's key.
func lockStore(path string) (unlock func(), err error) {
	lock := path + ".lock"
	deadline := time.Now().Add(lockWait)
	for {
		f, err := os.OpenFile(lock, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, _ = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
			f.Close()
			return func() { os.Remove(lock) }, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("key store: %w", err)
		}
		if fi, serr := os.Stat(lock); serr == nil && time.Since(fi.ModTime()) > lockStale {
			os.Remove(lock)
			continue
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %s exists; remove it if no other tokengate keys command is running", ErrStoreLocked, lock)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
