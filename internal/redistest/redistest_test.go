package redistest

import (
	"runtime"
	"testing"
)

// outcomeTB records how startRedis ended a test, without ending ours.
type outcomeTB struct {
	testing.TB
	failed, skipped bool
}

func (o *outcomeTB) Helper() {}

func (o *outcomeTB) Fatalf(string, ...any) {
	o.failed = true
	runtime.Goexit()
}

func (o *outcomeTB) Skip(...any) {
	o.skipped = true
	runtime.Goexit()
}

// Without redis-server, the Redis tests fail under CI and skip elsewhere.
func TestStartRedisWithoutServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	for _, ci := range []string{"1", ""} {
		t.Setenv("CI", ci)
		o := &outcomeTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			Start(o)
		}()
		<-done
		if o.failed != (ci != "") || o.skipped != (ci == "") {
			t.Errorf("CI=%q: failed %v, skipped %v; want failed %v, skipped %v", ci, o.failed, o.skipped, ci != "", ci == "")
		}
	}
}
