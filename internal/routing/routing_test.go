package routing

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// conversation is the prompt of turn n of a chat with a system prompt:
// each turn repeats the turns before and adds its own.
func conversation(system string, user, n int) []byte {
	var b strings.Builder
	b.WriteString(`[{"role":"system","content":"` + system + `"}`)
	for turn := range n {
		fmt.Fprintf(&b, `,{"role":"user","content":"user %d asks question %d, in some words"},{"role":"assistant","content":"answer %d"}`, user, turn, turn)
	}
	return []byte(b.String())
}

func TestChain(t *testing.T) {
	a := Chain(nil, 8, []byte("0123456789abcdefXYZ"))
	if len(a) != 2 {
		t.Fatalf("%d hashes of 19 bytes in blocks of 8, want 2 (the partial block is not hashed)", len(a))
	}
	// Where the parts are cut does not matter: only the bytes do.
	if b := Chain(nil, 8, []byte("0123"), []byte("456789ab"), []byte("cdefXYZ")); fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("split parts give %v, want %v", b, a)
	}
	// A prompt that repeats another and adds to it shares its chain; a
	// change in one block changes its hash and every one after.
	longer := Chain(nil, 8, []byte("0123456789abcdefXYZ and more"))
	if len(longer) != 3 || longer[0] != a[0] || longer[1] != a[1] {
		t.Fatalf("a longer prompt's chain %v does not start with %v", longer, a)
	}
	changed := Chain(nil, 8, []byte("0123456789abcdeFXYZ and more"))
	if changed[0] != a[0] || changed[1] == a[1] || changed[2] == longer[2] {
		t.Fatalf("a change in block 1 gives %v against %v, want block 0 the same and 1 and 2 different", changed, longer)
	}
	// The same block at another position is another link of the chain.
	if h := Chain(nil, 4, []byte("abcdabcd")); h[0] == h[1] {
		t.Fatalf("repeated block hashed alike at two positions: %v", h)
	}
	if h := Chain(nil, 8); len(h) != 0 {
		t.Fatalf("no prompt: %v, want no hash", h)
	}
	if h := Chain(nil, 1, bytes.Repeat([]byte("x"), MaxBlocks+100)); len(h) != MaxBlocks {
		t.Fatalf("a huge prompt: %d hashes, want MaxBlocks (%d)", len(h), MaxBlocks)
	}
}

// The next turn of a conversation goes where the turn before went, and
// a conversation with another system prompt is placed apart from it by
// rendezvous hashing, as every gateway would place it.
func TestPolicyFollowsPrefix(t *testing.T) {
	replicas := []Replica{{Key: "a:1"}, {Key: "b:1"}, {Key: "c:1"}, {Key: "d:1"}}
	system := strings.Repeat("be brief. ", 60) // longer than PlaceBlocks of 64 bytes
	p := NewPolicy(0, nil)
	first := p.Choose(replicas, Chain(nil, 64, conversation(system, 1, 1)))
	if first.Reason != Placed {
		t.Fatalf("a new prompt: %+v, want placed", first)
	}
	for turn := 2; turn <= 5; turn++ {
		hashes := Chain(nil, 64, conversation(system, 1, turn))
		c := p.Choose(replicas, hashes)
		if c.Replica != first.Replica || c.Reason != Matched || c.Matched < len(hashes)/2 {
			t.Fatalf("turn %d: %+v of %d blocks, want replica %d matched for most of them", turn, c, len(hashes), first.Replica)
		}
	}
	// Another gateway, with an empty index, places the prompt alike.
	other := NewPolicy(0, nil)
	if c := other.Choose(replicas, Chain(nil, 64, conversation(system, 7, 3))); c.Replica != first.Replica || c.Reason != Placed {
		t.Fatalf("another gateway: %+v, want placed on replica %d", c, first.Replica)
	}
	// Another user with the same system prompt shares its blocks: it
	// goes where they are.
	if c := p.Choose(replicas, Chain(nil, 64, conversation(system, 2, 1))); c.Replica != first.Replica || c.Reason != Matched {
		t.Fatalf("the same system prompt: %+v, want replica %d matched", c, first.Replica)
	}
	// Distinct system prompts spread over the replicas.
	seen := map[int]bool{}
	for i := range 40 {
		c := NewPolicy(0, nil).Choose(replicas, Chain(nil, 64, conversation(fmt.Sprintf("system prompt %d ", i)+strings.Repeat("x", 200), 1, 1)))
		seen[c.Replica] = true
	}
	if len(seen) != len(replicas) {
		t.Fatalf("40 system prompts placed on %d of %d replicas, want all", len(seen), len(replicas))
	}
}

// A few prompts on an idle fleet each get a replica of their own: one
// that holds more than LoadFactor times the mean of what replicas were
// sent is no new prompt's home, whatever the hashes say. Two gateways
// that see the same prompts place them alike.
func TestPolicyPlacesApart(t *testing.T) {
	replicas := []Replica{{Key: "10.0.0.1:8000"}, {Key: "10.0.0.2:8000"}, {Key: "10.0.0.3:8000"}, {Key: "10.0.0.4:8000"}}
	for trial := range 50 {
		p, other := NewPolicy(0, nil), NewPolicy(0, nil)
		homes := map[int]bool{}
		for i := range 4 {
			hashes := Chain(nil, 64, []byte(fmt.Sprintf("trial %d, system prompt %d: %s", trial, i, strings.Repeat("be helpful. ", 60))))
			c := p.Choose(replicas, hashes)
			if c.Reason != Placed || homes[c.Replica] {
				t.Fatalf("trial %d, prompt %d: %+v, homes so far %v, want placed on a replica of its own", trial, i, c, homes)
			}
			homes[c.Replica] = true
			if o := other.Choose(replicas, hashes); o.Replica != c.Replica {
				t.Fatalf("trial %d, prompt %d: another gateway placed it on %d, this one on %d", trial, i, o.Replica, c.Replica)
			}
		}
	}
}

// A conversation that starts short, under PlaceBlocks, stays on its
// replica as it grows: each turn holds more than half of the next, or
// all of the turn before, when the next pastes a document.
func TestPolicyGrowingConversation(t *testing.T) {
	replicas := []Replica{{Key: "a"}, {Key: "b"}, {Key: "c"}, {Key: "d"}}
	p := NewPolicy(0, nil)
	for user := range 20 {
		home := -1
		for turn := 1; turn <= 8; turn++ {
			hashes := Chain(nil, 32, conversation("short", user, turn))
			c := p.Choose(replicas, hashes)
			if home < 0 {
				home = c.Replica
				continue
			}
			if c.Replica != home || c.Reason != Matched {
				t.Fatalf("user %d, turn %d (%d blocks): %+v, want matched on %d, where the turns before went", user, turn, len(hashes), c, home)
			}
		}
	}
	first := conversation("short", 99, 1)
	home := p.Choose(replicas, Chain(nil, 32, first)).Replica
	pasted := string(first[:len(first)-1]) + `,{"role":"user","content":"` + strings.Repeat("a pasted document ", 50) + `"}]`
	if c := p.Choose(replicas, Chain(nil, 32, []byte(pasted))); c.Replica != home || c.Reason != Matched {
		t.Fatalf("a paste after the first turn: %+v, want matched on %d, which holds the first turn", c, home)
	}
}

// An opening every prompt shares, shorter than PlaceBlocks and half of
// each prompt, does not draw them all to the replica that got the
// first: they are placed apart.
func TestPolicyCommonOpening(t *testing.T) {
	replicas := []Replica{{Key: "a"}, {Key: "b"}, {Key: "c"}, {Key: "d"}}
	p := NewPolicy(0, nil)
	got := map[int]int{}
	for i := range 100 {
		prompt := fmt.Sprintf("You are a helpful assistant. Conversation %d: %s", i, strings.Repeat("details ", 40))
		c := p.Choose(replicas, Chain(nil, 32, []byte(prompt)))
		if c.Reason != Placed {
			t.Fatalf("prompt %d: %+v, want placed: a shared first block is no prefix worth following", i, c)
		}
		got[c.Replica]++
	}
	for i := range replicas {
		if got[i] < 10 {
			t.Fatalf("100 prompts with a common opening placed %v, want each replica at least 10", got)
		}
	}
}

// A replica past LoadFactor times the mean load is skipped even though
// it holds the prefix; the request goes to the first replica in the
// prompt's rendezvous order among those at or under the mean load, as
// another gateway would send it, and the prefix is then held by both.
func TestPolicyBoundedLoad(t *testing.T) {
	p := NewPolicy(1.25, nil)
	hashes := Chain(nil, 16, bytes.Repeat([]byte("shared system prompt "), 20))
	idle := []Replica{{Key: "a"}, {Key: "b"}, {Key: "c"}, {Key: "d"}}
	home := p.Choose(idle, hashes).Replica
	loaded := append([]Replica(nil), idle...)
	loaded[home].Load = 4       // bound: ceil(1.25 * 8/4) = 3: 4 is over
	loaded[(home+2)%4].Load = 3 // under the bound, over the mean (7/4)
	c := p.Choose(loaded, hashes)
	if c.Reason != Overloaded || loaded[c.Replica].Load != 0 {
		t.Fatalf("%+v with loads %+v, want overloaded, an idle replica", c, loaded)
	}
	other := NewPolicy(1.25, nil)
	other.Choose(idle, hashes)
	if o := other.Choose(loaded, hashes); o.Replica != c.Replica {
		t.Fatalf("another gateway spilt to %d, this one to %d, want the same replica", o.Replica, c.Replica)
	}
	loaded[(home+2)%4].Load = 1
	spill := c.Replica
	// Both hold it now: the less loaded of them gets the next.
	loaded[home].Load = 1
	if c := p.Choose(loaded, hashes); c.Reason != Matched || c.Replica != spill {
		t.Fatalf("%+v with loads %+v, want matched on %d, the idle holder", c, loaded, spill)
	}
	// Within the bound, the holder gets it though others are idler.
	p = NewPolicy(1.25, nil)
	home = p.Choose(idle, hashes).Replica
	loaded = append([]Replica(nil), idle...)
	loaded[home].Load = 2 // bound: ceil(1.25 * 7/4) = 3
	loaded[(home+1)%4].Load = 4
	if c := p.Choose(loaded, hashes); c.Reason != Matched || c.Replica != home {
		t.Fatalf("%+v with loads %+v, want matched on %d, within the bound", c, loaded, home)
	}
}

// Over many requests the load stays bounded: no replica is sent more
// than LoadFactor times the mean, while prefixes still mostly match.
func TestPolicyBoundsLoadUnderTraffic(t *testing.T) {
	p := NewPolicy(1.25, nil)
	replicas := []Replica{{Key: "a"}, {Key: "b"}, {Key: "c"}, {Key: "d"}}
	rng := rand.New(rand.NewPCG(1, 2))
	var inFlight [][2]int // replica, requests left before it ends
	sent := make([]int, len(replicas))
	matched := 0
	for i := range 4000 {
		// Two system prompts, most traffic on one: affinity alone would
		// send it all to one replica.
		system := "popular system prompt "
		if rng.IntN(5) == 0 {
			system = "rare system prompt "
		}
		c := p.Choose(replicas, Chain(nil, 16, conversation(strings.Repeat(system, 10), rng.IntN(50), 1+rng.IntN(4))))
		if c.Reason == Matched {
			matched++
		}
		total := 0
		for _, r := range replicas {
			total += r.Load
		}
		if bound := 1.25*float64(total)/4 + 1; float64(replicas[c.Replica].Load) >= bound+1 {
			t.Fatalf("request %d sent to %d with load %d, bound %.1f", i, c.Replica, replicas[c.Replica].Load, bound)
		}
		replicas[c.Replica].Load++
		sent[c.Replica]++
		inFlight = append(inFlight, [2]int{c.Replica, 8 + rng.IntN(8)})
		for j := 0; j < len(inFlight); j++ {
			if inFlight[j][1]--; inFlight[j][1] == 0 {
				replicas[inFlight[j][0]].Load--
				inFlight = append(inFlight[:j], inFlight[j+1:]...)
				j--
			}
		}
	}
	for i, n := range sent {
		if float64(n) > 1.3*4000/4 {
			t.Errorf("replica %d was sent %d of 4000 requests, want at most 1.3 times the mean", i, n)
		}
	}
	if matched < 3000 {
		t.Errorf("%d of 4000 requests matched a prefix, want most", matched)
	}
}

// Replicas added and removed: a prefix held by a replica that is gone
// is placed again among those left; one added takes its share of new
// prompts; an index entry naming a gone replica is never chosen.
func TestPolicyReplicasChange(t *testing.T) {
	p := NewPolicy(0, nil)
	four := []Replica{{Key: "a"}, {Key: "b"}, {Key: "c"}, {Key: "d"}}
	hashes := Chain(nil, 16, bytes.Repeat([]byte("a prompt of some length "), 8))
	home := four[p.Choose(four, hashes).Replica].Key
	var left []Replica
	for _, r := range four {
		if r.Key != home {
			left = append(left, r)
		}
	}
	c := p.Choose(left, hashes)
	if c.Replica < 0 || left[c.Replica].Key == home || c.Reason != Placed {
		t.Fatalf("its replica removed: %+v among %+v, want placed among the others", c, left)
	}
	five := append(append([]Replica(nil), four...), Replica{Key: "e"})
	got := map[string]bool{}
	for i := range 200 {
		c := NewPolicy(0, nil).Choose(five, Chain(nil, 16, []byte(fmt.Sprintf("prompt number %d of many, long enough", i))))
		got[five[c.Replica].Key] = true
	}
	if !got["e"] {
		t.Fatal("a replica added got none of 200 new prompts")
	}
	if c := p.Choose(nil, hashes); c.Replica != -1 {
		t.Fatalf("no replicas: %+v, want -1", c)
	}
}

// A prompt without a full block has no prefix: the least loaded replica,
// ties taking turns; nothing is recorded.
func TestPolicyNoPrefix(t *testing.T) {
	p := NewPolicy(0, nil)
	replicas := []Replica{{Key: "a", Load: 2}, {Key: "b"}, {Key: "c"}, {Key: "d", Load: 1}}
	got := map[int]int{}
	for range 100 {
		c := p.Choose(replicas, nil)
		if c.Reason != NoPrefix || replicas[c.Replica].Load != 0 {
			t.Fatalf("%+v, want no_prefix on an idle replica", c)
		}
		got[c.Replica]++
	}
	if got[1] == 0 || got[2] == 0 {
		t.Fatalf("ties between idle replicas %v, want both chosen in turn", got)
	}
	if n := p.Index().Len(); n != 0 {
		t.Fatalf("%d blocks recorded, want none", n)
	}
}

// A prompt past MaxBlocks is hashed up to it: its next turn, which
// differs only past it, goes where it went, and costs no more.
func TestPolicyHugePrompt(t *testing.T) {
	replicas := []Replica{{Key: "a"}, {Key: "b"}, {Key: "c"}}
	p := NewPolicy(0, nil)
	huge := bytes.Repeat([]byte("a long document "), 2<<20/16) // 2 MiB
	first := p.Choose(replicas, Chain(nil, DefaultBlockSize, huge))
	next := Chain(nil, DefaultBlockSize, huge, []byte(" and a question"))
	if len(next) != MaxBlocks {
		t.Fatalf("%d blocks hashed of 2 MiB, want MaxBlocks (%d)", len(next), MaxBlocks)
	}
	if c := p.Choose(replicas, next); c.Replica != first.Replica || c.Reason != Matched || c.Matched != MaxBlocks {
		t.Fatalf("the next turn of a huge prompt: %+v, want matched on %d for all %d blocks", c, first.Replica, MaxBlocks)
	}
}

// The index stays within its capacity, forgetting the least recently
// used blocks first.
func TestIndexBounded(t *testing.T) {
	ix := NewIndex(100)
	for i := range 1000 {
		ix.record(Chain(nil, 8, []byte(fmt.Sprintf("%06d prompt ....", i))), "a")
	}
	if n := ix.Len(); n != 100 {
		t.Fatalf("%d blocks remembered, want the capacity, 100", n)
	}
	recent := Chain(nil, 8, []byte(fmt.Sprintf("%06d prompt ....", 999)))
	if n, holders, _ := ix.longest(recent, func(string) bool { return true }); n != len(recent) || holders[0] != "a" {
		t.Fatalf("the latest prompt: %d blocks held by %v, want %d by a", n, holders, len(recent))
	}
	old := Chain(nil, 8, []byte(fmt.Sprintf("%06d prompt ....", 0)))
	if n, _, _ := ix.longest(old, func(string) bool { return true }); n != 0 {
		t.Fatalf("the oldest prompt: %d blocks held, want 0 (forgotten)", n)
	}
	// A block sent to several replicas keeps the most recent first.
	ix.record(recent, "b")
	ix.record(recent, "c")
	ix.record(recent, "b")
	if _, holders, _ := ix.longest(recent, func(string) bool { return true }); fmt.Sprint(holders) != "[b c a ]" {
		t.Fatalf("holders %v, want [b c a ]", holders)
	}
}

func FuzzChain(f *testing.F) {
	f.Add([]byte(`[{"role":"user","content":"hi"}]`), []byte(`{"role":"assistant"}`), uint8(7))
	f.Fuzz(func(t *testing.T, a, b []byte, size uint8) {
		bs := int(size%64) + 1
		whole := Chain(nil, bs, append(append([]byte(nil), a...), b...))
		split := Chain(nil, bs, a, b)
		if fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Fatalf("split at %d: %v, whole %v", len(a), split, whole)
		}
		if want := min((len(a)+len(b))/bs, MaxBlocks); len(whole) != want {
			t.Fatalf("%d hashes of %d bytes in blocks of %d, want %d", len(whole), len(a)+len(b), bs, want)
		}
		// A prefix of the bytes has a prefix of the chain.
		if len(a) > 0 {
			pre := Chain(nil, bs, a)
			for i := range pre {
				if pre[i] != whole[i] {
					t.Fatalf("block %d of a prefix differs", i)
				}
			}
		}
	})
}

// BenchmarkChoose is a request's cost at 10,000 tracked prefixes: its
// chain hashed (an 8 KiB prompt, 32 blocks), the index searched and
// the choice recorded.
func BenchmarkChoose(b *testing.B) {
	p := NewPolicy(0, nil)
	replicas := []Replica{{Key: "10.0.0.1:8000"}, {Key: "10.0.0.2:8000"}, {Key: "10.0.0.3:8000"}, {Key: "10.0.0.4:8000"}}
	prompts := make([][]byte, 10000)
	for i := range prompts {
		prompts[i] = conversation(fmt.Sprintf("system prompt %d ", i%50)+strings.Repeat("x", 6000), i, 1+i%5)
		p.Choose(replicas, Chain(nil, DefaultBlockSize, prompts[i]))
	}
	var hashes []uint64
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		hashes = Chain(hashes[:0], DefaultBlockSize, prompts[i%len(prompts)])
		p.Choose(replicas, hashes)
		i++
	}
}
