package openai

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestWriteError(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{Errorf(400, "invalid_json", "bad \"body\"\n"), 400, "invalid_json"},
		{fmt.Errorf("wrapped: %w", Errorf(404, "DeploymentNotFound", "no")), 404, "DeploymentNotFound"},
		{&http.MaxBytesError{Limit: 10}, 413, "request_too_large"},
		{context.DeadlineExceeded, 504, "upstream_timeout"},
		{&net.OpError{Op: "read", Err: timeoutErr{}}, 504, "upstream_timeout"},
		{&net.OpError{Op: "dial", Err: fmt.Errorf("connection refused")}, 502, "upstream_unreachable"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			w := httptest.NewRecorder()
			if got := WriteError(w, tc.err); got != tc.status {
				t.Fatalf("status %d, want %d", got, tc.status)
			}
			if w.Code != tc.status || w.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("wrote %d %q", w.Code, w.Header().Get("Content-Type"))
			}
			var body struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("not JSON: %q", w.Body.String())
			}
			if body.Error.Code != tc.code || body.Error.Message == "" {
				t.Fatalf("body %q", w.Body.String())
			}
		})
	}
}

func TestWriteErrorClientGone(t *testing.T) {
	w := httptest.NewRecorder()
	if got := WriteError(w, context.Canceled); got != StatusClientClosed || w.Body.Len() != 0 {
		t.Fatalf("a hung-up client gets nothing written; got %d %q", got, w.Body.String())
	}
}
