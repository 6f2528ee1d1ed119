package simulator

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"testing"

	"github.com/tokengate/tokengate/internal/tokens"
)

type embeddingsResponse struct {
	Object string `json:"object"`
	Model  string `json:"model"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

// vectors decodes the embeddings of a response, float or base64.
func (r embeddingsResponse) vectors(t *testing.T) [][]float32 {
	t.Helper()
	var out [][]float32
	for _, d := range r.Data {
		var v []float32
		if len(d.Embedding) > 0 && d.Embedding[0] == '"' {
			var s string
			if err := json.Unmarshal(d.Embedding, &s); err != nil {
				t.Fatal(err)
			}
			raw, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				t.Fatalf("base64: %v", err)
			}
			if len(raw)%4 != 0 {
				t.Fatalf("base64 embedding of %d bytes", len(raw))
			}
			for i := 0; i < len(raw); i += 4 {
				v = append(v, math.Float32frombits(binary.LittleEndian.Uint32(raw[i:])))
			}
		} else if err := json.Unmarshal(d.Embedding, &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func TestEmbeddings(t *testing.T) {
	_, srv := newServer(t, testConfig())
	count := tokens.ForModel("text-embedding-3-small").Count
	tests := []struct {
		name       string
		deployment string
		body       string
		inputs     int
		dims       int
		prompt     int
	}{
		{"string", "emb", `{"input":"The food was delicious."}`, 1, 1536, count("The food was delicious.")},
		{"strings", "emb", `{"input":["first text","second text","third"]}`, 3, 1536, count("first text") + count("second text") + count("third")},
		{"token ids", "emb", `{"input":[1,2,3,4]}`, 1, 1536, 4},
		{"arrays of token ids", "emb", `{"input":[[1,2],[3,4,5]]}`, 2, 1536, 5},
		{"dimensions", "emb", `{"input":"hello","dimensions":256}`, 1, 256, count("hello")},
		{"large model", "emb-large", `{"input":"hello"}`, 1, 3072, count("hello")},
		{"ada", "ada", `{"input":"hello","encoding_format":"float"}`, 1, 1536, count("hello")},
		{"base64", "emb", `{"input":["hello","world"],"encoding_format":"base64"}`, 2, 1536, count("hello") + count("world")},
		{"v1 route", "", `{"model":"emb","input":"hello"}`, 1, 1536, count("hello")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := deploymentURL(srv.URL, tt.deployment, "embeddings")
			if tt.deployment == "" {
				url = srv.URL + "/openai/v1/embeddings"
			}
			resp, b := post(t, url, tt.body, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			r := decode[embeddingsResponse](t, b)
			if r.Object != "list" || r.Model == "" || len(r.Data) != tt.inputs {
				t.Fatalf("object %q model %q data %d", r.Object, r.Model, len(r.Data))
			}
			for i, d := range r.Data {
				if d.Object != "embedding" || d.Index != i {
					t.Errorf("data[%d] object %q index %d", i, d.Object, d.Index)
				}
			}
			for i, v := range r.vectors(t) {
				if len(v) != tt.dims {
					t.Errorf("vector %d has %d dimensions, want %d", i, len(v), tt.dims)
				}
				var sum float64
				for _, f := range v {
					sum += float64(f) * float64(f)
				}
				if math.Abs(sum-1) > 1e-4 {
					t.Errorf("vector %d has norm² %g, want 1", i, sum)
				}
			}
			if r.Usage.PromptTokens != tt.prompt || r.Usage.TotalTokens != tt.prompt {
				t.Errorf("usage = %+v, want %d", r.Usage, tt.prompt)
			}
		})
	}
}

func TestEmbeddingsBase64MatchesFloat(t *testing.T) {
	_, srv := newServer(t, testConfig())
	url := deploymentURL(srv.URL, "emb", "embeddings")
	input := `"input":["alpha","beta","a longer sentence to embed"]`
	_, fb := post(t, url, `{`+input+`}`, nil)
	_, bb := post(t, url, `{`+input+`,"encoding_format":"base64"}`, nil)
	floats := decode[embeddingsResponse](t, fb).vectors(t)
	b64 := decode[embeddingsResponse](t, bb).vectors(t)
	if len(floats) != 3 || len(b64) != 3 {
		t.Fatalf("got %d and %d vectors", len(floats), len(b64))
	}
	for i := range floats {
		for k := range floats[i] {
			if floats[i][k] != b64[i][k] {
				t.Fatalf("vector %d component %d: float %v, base64 %v", i, k, floats[i][k], b64[i][k])
			}
		}
	}
}

func TestEmbeddingsAreDeterministic(t *testing.T) {
	_, srv := newServer(t, testConfig())
	url := deploymentURL(srv.URL, "emb", "embeddings")
	get := func(body string) [][]float32 {
		_, b := post(t, url, body, nil)
		return decode[embeddingsResponse](t, b).vectors(t)
	}
	a := get(`{"input":["same","other"]}`)
	b := get(`{"input":"same"}`)
	for k := range a[0] {
		if a[0][k] != b[0][k] {
			t.Fatal("the same input embedded differently")
		}
	}
	var dot float64
	for k := range a[0] {
		dot += float64(a[0][k]) * float64(a[1][k])
	}
	if math.Abs(dot) > 0.2 {
		t.Errorf("different inputs have cosine similarity %g", dot)
	}
}

func TestEmbeddingsErrors(t *testing.T) {
	_, srv := newServer(t, testConfig())
	tests := []struct {
		name, deployment, body, param string
	}{
		{"empty array", "emb", `{"input":[]}`, ""},
		{"empty string in array", "emb", `{"input":["a",""]}`, ""},
		{"empty token array", "emb", `{"input":[[1],[]]}`, ""},
		{"missing input", "emb", `{}`, "input"},
		{"mixed array", "emb", `{"input":["a",1]}`, "input"},
		{"object input", "emb", `{"input":{"a":1}}`, "input"},
		{"bad encoding", "emb", `{"input":"a","encoding_format":"hex"}`, "encoding_format"},
		{"dimensions too large", "emb", `{"input":"a","dimensions":4000}`, "dimensions"},
		{"dimensions zero", "emb", `{"input":"a","dimensions":0}`, "dimensions"},
		{"dimensions on ada", "ada", `{"input":"a","dimensions":256}`, "dimensions"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := post(t, deploymentURL(srv.URL, tt.deployment, "embeddings"), tt.body, nil)
			if resp.StatusCode != 400 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			e := decode[errorBody](t, b)
			var param string
			if e.Error.Param != nil {
				param = *e.Error.Param
			}
			if param != tt.param || e.Error.Type != "invalid_request_error" {
				t.Errorf("error = %s", b)
			}
		})
	}
}
