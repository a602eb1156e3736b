package faultbackend

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func post(t *testing.T, s *Server, f Fault, body string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.URL+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("X-Fault", Header(f))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

const stream = `{"model":"m","stream":true,"messages":[]}`

func TestModes(t *testing.T) {
	s := New()
	defer s.Close()
	tests := []struct {
		fault   Fault
		body    string
		status  int
		want    string // in the body
		wantErr bool   // reading fails (reset)
	}{
		{Fault{}, `{"model":"m"}`, 200, `"content":"tok0 tok1 tok2 "`, false},
		{Fault{}, stream, 200, "data: [DONE]\n\n", false},
		{Fault{Status: 429, RetryAfter: "2"}, `{}`, 429, `"fault 429"`, false},
		{Fault{Mode: HTML}, `{}`, 502, "<html>", false},
		{Fault{Mode: InvalidJSON}, `{}`, 200, `{"choices":[{"message":{"content":"cut`, false},
		{Fault{Mode: HugeBody, Size: 1 << 20}, `{}`, 200, strings.Repeat("x", 1<<20), false},
		{Fault{Mode: Cut, Tokens: 2}, stream, 200, `"tok1 "`, false},
		{Fault{Mode: CRLF}, stream, 200, "data: [DONE]\r\n\r\n", false},
		{Fault{Mode: Pings}, stream, 200, ": ping\n\ndata: ", false},
		{Fault{Mode: Split}, stream, 200, "data: [DONE]\n\n", false},
		{Fault{Mode: ErrorEvent}, stream, 200, "event: error\ndata: {\"error\"", false},
		{Fault{Mode: UsageChunk}, stream, 200, `"choices":[],"usage":{"prompt_tokens":5`, false},
		{Fault{Mode: HugeEvent, Size: 1 << 20}, stream, 200, strings.Repeat("x", 1<<20), false},
		{Fault{Mode: Reset}, stream, 200, "", true},
	}
	for _, tt := range tests {
		resp, body, err := post(t, s, tt.fault, tt.body)
		if tt.wantErr {
			if err == nil {
				t.Errorf("%+v: read without error", tt.fault)
			}
			continue
		}
		if err != nil || resp.StatusCode != tt.status || !strings.Contains(body, tt.want) {
			t.Errorf("%+v: %v %v %.200q, want status %d with %.200q", tt.fault, err, resp, body, tt.status, tt.want)
		}
		if tt.fault.Mode == Cut && strings.Contains(body, "[DONE]") {
			t.Errorf("cut stream has [DONE]")
		}
		if tt.fault.RetryAfter != "" && resp.Header.Get("Retry-After") != tt.fault.RetryAfter {
			t.Errorf("Retry-After %q, want %q", resp.Header.Get("Retry-After"), tt.fault.RetryAfter)
		}
	}
	if s.Count() != len(tests) || string(s.Requests()[0].Body) != `{"model":"m"}` {
		t.Fatalf(`recorded %d requests, want %d, the first {"model":"m"}`, s.Count(), len(tests))
	}
}

func TestCancelRecorded(t *testing.T) {
	s := New()
	defer s.Close()
	client := &http.Client{Timeout: 100 * time.Millisecond}
	req, _ := http.NewRequest("POST", s.URL, strings.NewReader(stream))
	req.Header.Set("X-Fault", Header(Fault{Mode: Stall}))
	if resp, err := client.Do(req); err == nil {
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if !s.WaitCancelled(5*time.Second) || !s.Requests()[0].Cancelled {
		t.Fatal("cancellation not recorded")
	}
	if _, err := http.Get(RefusingURL()); err == nil {
		t.Fatal("RefusingURL accepted a connection")
	}
}
