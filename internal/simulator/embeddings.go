package simulator

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"strconv"
)

// embed answers an embeddings request: one deterministic unit vector per input,
// derived from the input's content, of the model's default dimensions (3072
// for text-embedding-3-large, 1536 otherwise) or the requested "dimensions".
// With encoding_format "base64" each vector is the base64 of its little-endian
// float32 values, which is what the official Python SDK asks for by default.
func (x *exchange) embed(dep *deployment, req *request, prompt int) {
	if err := x.sleep(x.lat.TimeToFirstToken); err != nil {
		x.interrupted(err)
		return
	}
	dims := dep.dims
	if req.dimensions > 0 {
		dims = req.dimensions
	}
	if cap(x.vec) < dims {
		x.vec = make([]float32, dims)
	}
	vec := x.vec[:dims]

	b := append(x.out[:0], `{"data":[`...)
	raw := x.raw[:0]
	for i, item := range req.prompts {
		if i > 0 {
			b = append(b, ',')
		}
		embedding(vec, item.hash)
		b = append(b, `{"embedding":`...)
		if req.base64 {
			raw = raw[:0]
			for _, f := range vec {
				raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
			}
			b = append(b, '"')
			b = base64.StdEncoding.AppendEncode(b, raw)
			b = append(b, '"')
		} else {
			b = append(b, '[')
			for k, f := range vec {
				if k > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendFloat(b, float64(f), 'g', -1, 32)
			}
			b = append(b, ']')
		}
		b = append(b, `,"index":`...)
		b = appendInt(b, i)
		b = append(b, `,"object":"embedding"}`...)
	}
	b = append(b, `],"model":`...)
	b = append(b, dep.modelJSON...)
	b = append(b, `,"object":"list","usage":{"prompt_tokens":`...)
	b = appendInt(b, prompt)
	b = append(b, `,"total_tokens":`...)
	b = appendInt(b, prompt)
	b = append(b, "}}"...)
	x.out, x.raw = b, raw
	x.writeJSON()
}

// embedding fills vec with the unit vector of an input whose content hashes to
// seed: the same input always embeds to the same vector, different inputs to
// practically orthogonal ones.
func embedding(vec []float32, seed uint64) {
	var sum float64
	for k := range vec {
		// Uniform in [-1, 1) from the top 53 bits.
		v := float64(splitmix64(seed+uint64(k))>>11)/(1<<52) - 1
		vec[k] = float32(v)
		sum += v * v
	}
	if sum == 0 {
		vec[0], sum = 1, 1
	}
	scale := 1 / math.Sqrt(sum)
	for k := range vec {
		vec[k] = float32(float64(vec[k]) * scale)
	}
}
