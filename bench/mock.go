package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"

	fb "github.com/chatgateway/caddy-chat-gateway/internal/faultbackend"
)

// runMock serves the fault backend (behaving normally unless a request
// says otherwise) on 127.0.0.1 and prints its URL. A request says how
// to answer in its X-Fault header or, for gateways that do not forward
// that header (peers), in its model name: see faultFromModel.
func runMock() {
	s := fb.New()
	s.Discard = true
	inner := endpointMock(embeddingsReply(embeddingVectors, embeddingDimensions), responsesStream(responsesDeltas), s.Config.Handler)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("http://" + l.Addr().String())
	log.Fatal(http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Fault") == "" && r.Method == http.MethodPost {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			if f, ok := faultFromModel(body); ok {
				r.Header.Set("X-Fault", f)
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		inner.ServeHTTP(w, r)
	})))
}

// modelFaultPrefix starts a model name that carries a fault: the rest
// of the name is the X-Fault header's JSON.
const modelFaultPrefix = "fault:"

// modelKey is how a request body names its model, as chatBody writes it.
var modelKey = []byte(`"model":"` + modelFaultPrefix)

// faultFromModel finds a fault in a chat request's model name
// ("fault:" then the X-Fault JSON, as chatBody writes it) with a byte
// search, so the mock stays cheap under load. It reports false when the
// body names no such model or the fault is not valid JSON.
func faultFromModel(body []byte) (string, bool) {
	i := bytes.Index(body, modelKey)
	if i < 0 {
		return "", false
	}
	// Decode the JSON string that starts at the model value's quote.
	var model string
	if err := json.NewDecoder(bytes.NewReader(body[i+len(`"model":`):])).Decode(&model); err != nil {
		return "", false
	}
	f := model[len(modelFaultPrefix):]
	if !json.Valid([]byte(f)) {
		return "", false
	}
	return f, true
}
