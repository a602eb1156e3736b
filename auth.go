package chatgateway

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/chatgateway/caddy-chat-gateway/internal/keys"
	"github.com/chatgateway/caddy-chat-gateway/internal/limits"
)

// Auth is the client keys the gateway accepts. With it, every request
// but GET /healthz and /readyz must carry one of them, as "Authorization: Bearer
// <key>", "x-api-key: <key>" or "api-key: <key>"; others get OpenAI's
// 401 invalid_api_key before their body is read.
type Auth struct {
	// Keys are the accepted keys.
	Keys []ClientKey `json:"keys,omitempty"`

	// KeysFile is a JSON file of more keys, read when the config loads:
	// {"keys":[{"key":"sha256:...","id":"...","models":[...],
	// "expires":"<RFC 3339>","disabled":false,"requests":"60/1m"}]},
	// fields as in Keys. Placeholders such as {env.KEYS_FILE} are
	// resolved.
	KeysFile string `json:"keys_file,omitempty"`
}

// ClientKey is one accepted key and, optionally, limits of its own that
// replace the limits block's per-identity ones for this key (requests,
// tokens, concurrent, quota); a limits block must exist for them to
// apply.
type ClientKey struct {
	keys.Entry
	LimitSet
}

// defaultMetricsPerKey is the cap on key label values when
// metrics_per_key is given without a number.
const defaultMetricsPerKey = 100

// keysFileInterval is how often a keys_file is checked for changes.
var keysFileInterval = 2 * time.Second

// keyring is the keys a handler accepts at one time, with each key's own
// limits (by keys.Key.Index): replaced whole when its keys_file changes.
type keyring struct {
	set    *keys.Set
	limits []limits.Set
}

// provisionAuth builds the keyring: plain keys and keys_file resolved
// with repl, the file read, every key hashed. A keys_file is then
// watched for as long as the config runs.
func (h *Handler) provisionAuth(ctx caddy.Context, repl *caddy.Replacer) error {
	if h.Auth == nil {
		return nil
	}
	path := repl.ReplaceKnown(h.Auth.KeysFile, "")
	ring, err := h.loadKeys(repl, path)
	if err != nil {
		return err
	}
	if ring.set.Len() == 0 {
		h.logger.Warn("auth has no keys: every request but /healthz and /readyz is refused")
	}
	h.keys = new(atomic.Pointer[keyring])
	h.keys.Store(ring)
	if path != "" {
		go h.watchKeysFile(ctx, repl, path)
	}
	return nil
}

// loadKeys builds a keyring from the configured keys and those of the
// keys_file at path, if any.
func (h *Handler) loadKeys(repl *caddy.Replacer, path string) (*keyring, error) {
	configured := h.Auth.Keys
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading keys_file: %w", err)
		}
		more, err := keys.ParseFile[ClientKey](data)
		if err != nil {
			return nil, fmt.Errorf("keys_file %s: %w", path, err)
		}
		configured = append(slices.Clip(configured), more...)
	}
	entries := make([]keys.Entry, len(configured))
	ring := &keyring{limits: make([]limits.Set, len(configured))}
	for i, k := range configured {
		entries[i] = k.Entry
		entries[i].Key = repl.ReplaceKnown(k.Key, "")
		if entries[i].Key == "" && k.Key != "" {
			return nil, fmt.Errorf("auth: %s: empty key: %s is unset or empty", keys.EntryName(i, k.ID), k.Key)
		}
		if k.LimitSet == (LimitSet{}) {
			continue
		}
		if h.Limits == nil {
			return nil, fmt.Errorf("auth: key %d sets limits of its own, but there is no limits block to apply them", i+1)
		}
		set, err := k.LimitSet.parse()
		if err != nil {
			return nil, fmt.Errorf("auth: key %d: %w", i+1, err)
		}
		if set.Budget.Micros > 0 && h.prices == nil {
			return nil, fmt.Errorf("auth: key %d: %s", i+1, errBudgetNeedsPrices)
		}
		ring.limits[i] = set
	}
	set, err := keys.Build(entries)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	ring.set = set
	return ring, nil
}

// watchKeysFile reloads the keys when the keys_file at path changes
// (another size, time or file), until ctx ends with the config: a key
// removed, disabled or given other models applies to the next request,
// within keysFileInterval, without a config reload; requests in flight
// go on. A file that cannot be read or is invalid leaves the last good
// keys in place, and is logged once for each new error.
func (h *Handler) watchKeysFile(ctx caddy.Context, repl *caddy.Replacer, path string) {
	last, _ := os.Stat(path)
	failed := ""
	tick := time.NewTicker(keysFileInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		info, err := os.Stat(path)
		if err == nil && last != nil && os.SameFile(info, last) && info.Size() == last.Size() && info.ModTime().Equal(last.ModTime()) {
			continue
		}
		var ring *keyring
		if err == nil {
			ring, err = h.loadKeys(repl, path)
		}
		if err != nil {
			if err.Error() != failed {
				failed = err.Error()
				h.logger.Error("keys_file not reloaded: the last good keys stay in use", zap.String("keys_file", path), zap.Error(err))
			}
			continue
		}
		h.keys.Store(ring)
		last, failed = info, ""
		h.logger.Info("keys_file reloaded", zap.String("keys_file", path), zap.Int("keys", ring.set.Len()))
	}
}

// identify finds who is calling, before the request body is read. With
// an auth block the request must carry a valid key: its id becomes the
// identity, else identify answers 401 and reports false. Without one,
// the identity is whatever an earlier Caddy auth handler set in
// {http.auth.user.id}.
func (h *Handler) identify(x *exchange) bool {
	if h.keys == nil {
		if id, _ := x.repl.GetString("http.auth.user.id"); id != "" {
			x.keyID = id
		}
		return true
	}
	presented, ok := keys.Presented(x.r.Header)
	if !ok {
		x.unauthorized("You didn't provide an API key. Send it as Authorization: Bearer <key>, x-api-key: <key> or api-key: <key>.")
		return false
	}
	ring := h.keys.Load()
	k, found := ring.set.Lookup(presented)
	if !found || !k.Valid(time.Now()) {
		x.unauthorized("Incorrect API key provided: " + keys.Hint(presented) + ".")
		return false
	}
	x.key, x.keyID, x.keyLimits = k, k.ID, ring.limits[k.Index]
	x.repl.Set("http.auth.user.id", k.ID)
	return true
}

// keyLabels are the values the key metric label has taken in this
// process (the collectors are process-wide, so is the cap).
var keyLabels struct {
	sync.Mutex
	seen sync.Map // id -> struct{}
	n    int
}

// metricKey is the key label for an identity: empty unless
// metrics_per_key is set; the identity itself for the first
// MetricsPerKey identities the process counts, "other" beyond.
func (h *Handler) metricKey(id string) string {
	if h.MetricsPerKey <= 0 || id == "" {
		return ""
	}
	if _, ok := keyLabels.seen.Load(id); ok {
		return id
	}
	keyLabels.Lock()
	defer keyLabels.Unlock()
	if _, ok := keyLabels.seen.Load(id); ok {
		return id
	}
	if keyLabels.n >= h.MetricsPerKey {
		return "other"
	}
	keyLabels.seen.Store(id, struct{}{})
	keyLabels.n++
	return id
}
