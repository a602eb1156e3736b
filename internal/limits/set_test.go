package limits

import (
	"reflect"
	"testing"
	"time"
)

func TestSet(t *testing.T) {
	defaults := Set{Requests: Rate{600, time.Minute}, Tokens: Rate{10000, time.Minute}, Quota: Quota{1e6, Month}}
	key := defaults.Override(Set{Tokens: Rate{500, time.Second}, Concurrent: 4})
	want := Set{Requests: Rate{600, time.Minute}, Tokens: Rate{500, time.Second}, Concurrent: 4, Quota: Quota{1e6, Month}}
	if key != want {
		t.Fatalf("Override = %+v, want %+v", key, want)
	}
	dims := key.Dimensions(nil, "key:a")
	dims = Set{Tokens: Rate{300, time.Minute}}.Dimensions(dims, "model:m")
	wantDims := []Dimension{
		{Scope: "key:a", Kind: KindRequests, Limit: 600, Window: time.Minute},
		{Scope: "key:a", Kind: KindTokens, Limit: 500, Window: time.Second},
		{Scope: "key:a", Kind: KindConcurrent, Limit: 4},
		{Scope: "key:a", Kind: KindQuota, Limit: 1e6, Period: Month},
		{Scope: "model:m", Kind: KindTokens, Limit: 300, Window: time.Minute},
	}
	if !reflect.DeepEqual(dims, wantDims) {
		t.Fatalf("Dimensions = %+v\nwant %+v", dims, wantDims)
	}
	if got := (Set{}).Dimensions(nil, "key:a"); len(got) != 0 {
		t.Fatalf("an empty set has dimensions %+v", got)
	}
	for _, c := range []struct{ in, want int64 }{{100, 100}, {300, 300}, {301, 300}, {1 << 40, 300}} {
		if got := CapTokens(dims, c.in); got != c.want {
			t.Errorf("CapTokens(%d) = %d, want %d", c.in, got, c.want)
		}
	}
	if got := CapTokens(dims[:1], 5000); got != 5000 {
		t.Errorf("CapTokens without a tokens limit = %d, want 5000", got)
	}
}
