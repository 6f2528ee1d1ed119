package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

func TestParseUsage(t *testing.T) {
	for _, tc := range []struct {
		name               string
		in                 string
		prompt, completion int64
		ok                 bool
	}{
		{"azure", chatJSON, 9, 2, true},
		{"openai pretty", "{\n  \"usage\": {\n    \"prompt_tokens\": 19,\n    \"completion_tokens\" : 10,\n    \"total_tokens\": 29,\n    \"completion_tokens_details\": {\"reasoning_tokens\": 0}\n  }\n}", 19, 10, true},
		{"details first", `{"usage":{"completion_tokens_details":{"x":1},"prompt_tokens_details":{"cached_tokens":5},"completion_tokens":3,"prompt_tokens":4}}`, 4, 3, true},
		{"null", `{"choices":[],"usage":null}`, 0, 0, false},
		{"absent", `{"choices":[]}`, 0, 0, false},
		{"quoted in content", `{"content":"say \"usage\":{\"prompt_tokens\":5}","usage":{"prompt_tokens":1,"completion_tokens":2}}`, 1, 2, true},
		{"cut", `{"usage":{"prompt_tokens":7,"completion_tok`, 7, 0, true},
		// Read as the gateway reads it (openai.ParseUsage), so the load
		// generator's counts agree with the gateway's records.
		{"quoted number", `{"usage":{"prompt_tokens":"7"}}`, 7, 0, true},
		{"responses api", `{"usage":{"input_tokens":5,"output_tokens":6,"total_tokens":11}}`, 5, 6, true},
		{"tokens elsewhere, no usage", `{"max_tokens":5}`, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, c, ok := parseUsage([]byte(tc.in))
			if p != tc.prompt || c != tc.completion || ok != tc.ok {
				t.Errorf("parseUsage = %d, %d, %v; want %d, %d, %v", p, c, ok, tc.prompt, tc.completion, tc.ok)
			}
		})
	}
}

func TestReadStream(t *testing.T) {
	long := "data: {\"choices\":[{\"delta\":{\"content\":\"" + strings.Repeat("x", 10000) + "\"}}],\"usage\":null}\n\n"
	for _, tc := range []struct {
		name       string
		in         string
		content    bool
		usage      bool
		completion int64
		incomplete bool
	}{
		{"azure", chatSSE, true, true, 2, false},
		{"crlf and comments", ": keep-alive\r\n\r\nevent: message\r\ndata:{\"choices\":[{\"delta\":{\"content\": \"hi\"}}]}\r\n\r\ndata: [DONE]\r\n\r\n", true, false, 0, false},
		{"no done", strings.TrimSuffix(chatSSE, "data: [DONE]\n\n"), true, true, 2, true},
		{"cut mid line", chatSSE[:200], false, false, 0, true},
		{"line longer than the buffer", long + "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n", true, true, 4, false},
		{"empty content only", "data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\ndata: [DONE]\n\n", false, false, 0, false},
		{"done without newline", "data: [DONE]", false, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, r := range []func(string) io.Reader{
				func(s string) io.Reader { return strings.NewReader(s) },
				func(s string) io.Reader { return iotest.OneByteReader(strings.NewReader(s)) },
			} {
				var s scratch
				var o outcome
				s.readStream(r(tc.in), &o)
				if !o.content.IsZero() != tc.content || o.usage != tc.usage || o.completion != tc.completion || o.incomplete != tc.incomplete {
					t.Errorf("content %v usage %v completion %d incomplete %v", !o.content.IsZero(), o.usage, o.completion, o.incomplete)
				}
			}
		})
	}
}

func TestRequestBodies(t *testing.T) {
	c := Config{URL: "http://h/base/", Rate: 1, MaxTokens: 12, PromptTokens: []PromptShare{{Tokens: 5}},
		Models: []ModelShare{{Alias: "my model"}}, Header: []Header{{Name: "Host", Value: "gw.example"}}}.withDefaults()
	tg, err := buildTargets(c)
	if err != nil {
		t.Fatal(err)
	}
	js, st := tg.get(0, 0, 0, false), tg.get(0, 0, 0, true)
	if got := js.tmpl.URL.String(); got != "http://h/base/openai/deployments/my%20model/chat/completions?api-version="+DefaultAPIVersion {
		t.Errorf("azure URL %s", got)
	}
	if js.tmpl.Host != "gw.example" || js.tmpl.Header.Get("Content-Type") != "application/json" {
		t.Errorf("host %q headers %v", js.tmpl.Host, js.tmpl.Header)
	}
	var body map[string]any
	if err := json.Unmarshal(js.body, &body); err != nil {
		t.Fatal(err)
	}
	if body["max_tokens"] != 12.0 || body["stream"] != nil || body["model"] != nil ||
		body["messages"].([]any)[0].(map[string]any)["content"] != "the of and to in" {
		t.Errorf("json body %s", js.body)
	}
	if !st.stream || !strings.Contains(string(st.body), `"stream":true,"stream_options":{"include_usage":true}`) {
		t.Errorf("stream body %s", st.body)
	}
	c.API = "v1"
	tg, _ = buildTargets(c)
	if v := tg.get(0, 0, 0, false); v.tmpl.URL.String() != "http://h/base/v1/chat/completions" || !strings.Contains(string(v.body), `"model":"my model"`) {
		t.Errorf("v1 %s %s", v.tmpl.URL, v.body)
	}
	if n := len(strings.Fields(promptText(1000))); n != 1000 {
		t.Errorf("promptText(1000) has %d words", n)
	}
}

func TestErrorKind(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want string
	}{
		{context.Background(), &url.Error{Op: "Post", Err: context.DeadlineExceeded}, "timeout"},
		{ctx, io.ErrUnexpectedEOF, "canceled"},
		{context.Background(), io.EOF, "connection_closed"},
		{context.Background(), io.ErrShortWrite, "other"},
	} {
		if got := errorKind(tc.ctx, tc.err); got != tc.want {
			t.Errorf("errorKind(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func FuzzParseUsage(f *testing.F) {
	f.Add([]byte(chatJSON))
	f.Add([]byte(`{"usage":{"prompt_tokens":99999999999999999999999}}`))
	f.Add([]byte(`"usage" : {"a":"}"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, c, _ := parseUsage(b)
		if p < 0 || c < 0 {
			t.Fatalf("negative tokens %d %d", p, c)
		}
		_ = hasContent(b)
	})
}

func FuzzReadStream(f *testing.F) {
	f.Add([]byte(chatSSE))
	f.Add([]byte("data: [DONE]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s scratch
		var o outcome
		s.readStream(strings.NewReader(string(b)), &o)
		if o.completion < 0 || o.prompt < 0 {
			t.Fatalf("negative tokens")
		}
	})
}

// rawServer answers HTTP/1.1 keep-alive requests with canned chatJSON or
// chatSSE responses, by hand and with almost no allocation, so a benchmark
// in the same process counts the client's allocations, not a server's.
func rawServer(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	jsonResp := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(chatJSON)) + "\r\n\r\n" + chatJSON)
	sseResp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: " + strconv.Itoa(len(chatSSE)) + "\r\n\r\n" + chatSSE)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				body := make([]byte, 0, 4096)
				for {
					length := 0
					for {
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
						if v, ok := bytes.CutPrefix(line, []byte("Content-Length:")); ok { // as Go writes it
							length, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
						}
					}
					body = body[:length]
					if _, err := io.ReadFull(br, body); err != nil {
						return
					}
					resp := jsonResp
					if bytes.Contains(body, []byte(`"stream":true`)) {
						resp = sseResp
					}
					if _, err := conn.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// BenchmarkRequest measures the per-request client path (send, read,
// usage) against a canned local server; allocations per request are the
// figure to watch (most are net/http's), the time is mostly the loopback
// round trip.
func BenchmarkRequest(b *testing.B) {
	c := Config{URL: rawServer(b), Concurrency: 1}.withDefaults()
	tg, err := buildTargets(c)
	if err != nil {
		b.Fatal(err)
	}
	tr := newTransport(c)
	defer tr.CloseIdleConnections()
	for _, stream := range []bool{false, true} {
		name := map[bool]string{false: "json", true: "stream"}[stream]
		b.Run(name, func(b *testing.B) {
			t := tg.get(0, 0, 0, stream)
			var s scratch
			b.ReportAllocs()
			for b.Loop() {
				var o outcome
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				do(ctx, tr, t, &s, &o)
				cancel()
				if !o.ok() || o.completion != 2 {
					b.Fatalf("outcome %+v", o)
				}
			}
		})
	}
}

// BenchmarkRecord measures recording one finished request.
func BenchmarkRecord(b *testing.B) {
	c := Config{URL: "http://x", Rate: 1}.withDefaults()
	rec := newRecorder(c, time.Now().Add(-time.Hour))
	t := &target{stream: true}
	now := time.Now()
	o := &outcome{status: http.StatusOK, content: now.Add(5 * time.Millisecond), end: now.Add(20 * time.Millisecond), usage: true, prompt: 10, completion: 5}
	b.ReportAllocs()
	for b.Loop() {
		rec.started()
		rec.finished(t, now, now, o, true)
	}
}
