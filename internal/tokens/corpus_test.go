package tokens

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"
)

// The corpus the estimate is tested and benchmarked on: chat request bodies
// of realistic content, built deterministically from texts written for these
// tests (testdata/estimate), Go and Python sources of the Go distribution
// that runs the tests, and generated data.

// category is one kind of content.
type category struct {
	name string
	// realistic categories are held to the 5% target at every size; the
	// others are reported, and held to what they reach.
	realistic bool
	// pool returns the texts messages are made of, in order. Bodies of
	// every size draw from it from the start, so the smaller bodies are
	// prefixes of the larger ones.
	pool func(tb testing.TB) []string
}

func corpusCategories() []category {
	return []category{
		{"english prose", true, func(tb testing.TB) []string {
			return interleave(paragraphs(testdata(tb, "english.txt")), goComments(tb))
		}},
		{"chat + system", true, func(tb testing.TB) []string { return chatTurns(tb) }},
		{"go source", true, func(tb testing.TB) []string { return goSources(tb) }},
		{"python source", true, func(tb testing.TB) []string {
			return []string{testdata(tb, "python.py"), readGoroot(tb, "src/runtime/runtime-gdb.py")}
		}},
		{"json data", true, func(tb testing.TB) []string { return generatedJSON() }},
		{"markdown tables", true, func(tb testing.TB) []string { return []string{testdata(tb, "markdown.md"), generatedMarkdown()} }},
		{"csv numbers", true, func(tb testing.TB) []string { return generatedCSV() }},
		{"french", true, func(tb testing.TB) []string { return paragraphs(testdata(tb, "french.txt")) }},
		{"german", true, func(tb testing.TB) []string { return paragraphs(testdata(tb, "german.txt")) }},
		{"spanish", true, func(tb testing.TB) []string { return paragraphs(testdata(tb, "spanish.txt")) }},
		{"chinese", false, func(tb testing.TB) []string { return paragraphs(testdata(tb, "chinese.txt")) }},
		{"japanese", false, func(tb testing.TB) []string { return paragraphs(testdata(tb, "japanese.txt")) }},
		{"mixed", true, mixedPool},
	}
}

// bodySizes are the sizes of the messages arrays tested, in bytes.
var bodySizes = []int{1 << 10, 16 << 10, 100 << 10, 400 << 10}

// chatBody builds a messages array of about size bytes from pool: a system
// message, then user and assistant messages taking the pool's texts in
// turn, the last one cut to fit. The JSON is what clients send: no HTML
// escaping, non-ASCII as UTF-8.
func chatBody(pool []string, size int) (body []byte, msgs []Message) {
	msgs = []Message{{Role: "system", Content: "You are a helpful assistant. Answer accurately and concisely."}}
	used := len(marshalMessages(msgs))
	for i := 0; used < size; i++ {
		m := Message{Role: "user", Content: pool[i%len(pool)]}
		if i%2 == 1 {
			m.Role = "assistant"
		}
		over := len(`,{"role":"","content":""}`) + len(m.Role)
		room := max(size-used-over, 16)
		for jsonLen(m.Content) > room {
			m.Content = cut(m.Content, len(m.Content)-(jsonLen(m.Content)-room))
		}
		used += over + jsonLen(m.Content)
		msgs = append(msgs, m)
	}
	return marshalMessages(msgs), msgs
}

// marshalMessages encodes msgs as a messages array.
func marshalMessages(msgs []Message) []byte {
	type message struct {
		Role    string `json:"role"`
		Name    string `json:"name,omitempty"`
		Content string `json:"content"`
	}
	out := make([]message, len(msgs))
	for i, m := range msgs {
		out[i] = message{m.Role, m.Name, m.Content}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		panic(err)
	}
	return bytes.TrimSpace(buf.Bytes())
}

// jsonLen is the length of s as the inside of a JSON string.
func jsonLen(s string) int {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		panic(err)
	}
	return buf.Len() - len("\"\"\n")
}

// cut shortens s to at most n bytes, at a character boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// testdata returns a file of testdata/estimate.
func testdata(tb testing.TB, name string) string {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "estimate", name))
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// paragraphs splits text at blank lines.
func paragraphs(text string) []string {
	var out []string
	for p := range strings.SplitSeq(text, "\n\n") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// interleave alternates the texts of a and b, then the rest of the longer.
func interleave(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	for i := 0; i < max(len(a), len(b)); i++ {
		if i < len(a) {
			out = append(out, a[i])
		}
		if i < len(b) {
			out = append(out, b[i])
		}
	}
	return out
}

// chatTurns returns the contents of the support chat of chat.txt, system
// prompt first, as many times over as a large body needs.
func chatTurns(tb testing.TB) []string {
	var turns []string
	for t := range strings.SplitSeq(testdata(tb, "chat.txt"), "## ") {
		if _, content, ok := strings.Cut(t, "\n"); ok {
			turns = append(turns, strings.TrimSpace(content))
		}
	}
	return turns
}

var goroot = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	return strings.TrimSpace(string(out)), err
})

// readGoroot reads a file of the Go distribution, skipping the test if it
// cannot: the corpus is richer with it, but it is not the project's to ship.
func readGoroot(tb testing.TB, name string) string {
	tb.Helper()
	root, err := goroot()
	if err != nil || root == "" {
		tb.Skipf("no GOROOT (go env GOROOT: %v)", err)
	}
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		tb.Skip(err)
	}
	return string(b)
}

// goFiles are net/http's larger sources, in a fixed order.
var goFiles = []string{"server.go", "transport.go", "request.go", "client.go", "fs.go", "response.go", "transfer.go", "cookie.go", "header.go", "routing_tree.go", "pattern.go", "sniff.go"}

// goSources returns net/http's sources as user messages of about 6 KB, as
// someone asking about them would paste them.
func goSources(tb testing.TB) []string {
	var out []string
	for _, f := range goFiles {
		src := readGoroot(tb, "src/net/http/"+f)
		for len(src) > 0 {
			n := 6 << 10
			if n < len(src) {
				// End at a line.
				if i := strings.IndexByte(src[n:], '\n'); i >= 0 {
					n += i + 1
				} else {
					n = len(src)
				}
			} else {
				n = len(src)
			}
			out = append(out, "Can you review this code?\n\n```go\n"+src[:n]+"```")
			src = src[n:]
		}
	}
	return out
}

// goComments returns the doc comments of net/http as paragraphs of
// English: technical prose, written by many people over many years.
func goComments(tb testing.TB) []string {
	var out []string
	for _, f := range goFiles {
		var para []string
		sc := bufio.NewScanner(strings.NewReader(readGoroot(tb, "src/net/http/"+f)))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			text, ok := strings.CutPrefix(line, "// ")
			if ok && !strings.HasPrefix(text, "\t") && !strings.HasPrefix(text, "  ") {
				para = append(para, text)
				continue
			}
			if len(para) >= 3 {
				out = append(out, strings.Join(para, " "))
			}
			para = para[:0]
		}
	}
	return out
}

var (
	firstNames = []string{"Amelia", "Bruno", "Chen", "Dmitri", "Elena", "Farid", "Grace", "Hiroshi", "Ines", "Jonas", "Kwame", "Laura", "Mateo", "Nadia", "Oscar", "Priya"}
	lastNames  = []string{"Anderson", "Becker", "Costa", "Dubois", "Evans", "Fischer", "García", "Hansen", "Ivanova", "Jensen", "Kowalski", "Larsen", "Martin", "Novak", "Okafor", "Petrov"}
	cities     = []string{"Amsterdam", "Berlin", "Chicago", "Dublin", "Edinburgh", "Frankfurt", "Geneva", "Helsinki", "Istanbul", "Johannesburg", "Kyoto", "Lisbon", "Madrid", "Nairobi", "Oslo", "Prague"}
	products   = []string{"Widget A", "Widget B", "Sensor Pro", "Gateway Mini", "Cable Kit", "Power Supply 65W", "Mounting Bracket", "Field Unit X2"}
	regions    = []string{"EMEA", "NA", "LATAM", "APAC"}
)

// generatedJSON returns user messages holding JSON records (customer
// records as an API would return them, indented), asking about them.
func generatedJSON() []string {
	r := rand.New(rand.NewPCG(1, 2))
	var out []string
	for range 200 {
		type address struct {
			City    string `json:"city"`
			Zip     string `json:"postal_code"`
			Country string `json:"country"`
		}
		type record struct {
			ID        int      `json:"id"`
			Name      string   `json:"name"`
			Email     string   `json:"email"`
			CreatedAt string   `json:"created_at"`
			Active    bool     `json:"active"`
			Balance   float64  `json:"balance"`
			Tags      []string `json:"tags"`
			Address   address  `json:"address"`
		}
		recs := make([]record, 3+r.IntN(8))
		for i := range recs {
			first, last := firstNames[r.IntN(len(firstNames))], lastNames[r.IntN(len(lastNames))]
			recs[i] = record{
				ID:        100000 + r.IntN(900000),
				Name:      first + " " + last,
				Email:     strings.ToLower(first+"."+last) + "@example.com",
				CreatedAt: fmt.Sprintf("2024-%02d-%02dT%02d:%02d:%02dZ", 1+r.IntN(12), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60)),
				Active:    r.IntN(4) > 0,
				Balance:   float64(r.IntN(1000000)) / 100,
				Tags:      []string{regions[r.IntN(len(regions))], products[r.IntN(len(products))]},
				Address:   address{cities[r.IntN(len(cities))], fmt.Sprintf("%05d", r.IntN(100000)), "XX"},
			}
		}
		b, _ := json.MarshalIndent(recs, "", "  ")
		out = append(out, "Here are the customer records from the API:\n"+string(b)+"\nWhich of them are inactive?")
	}
	return out
}

// generatedCSV returns user messages holding CSV sales data.
func generatedCSV() []string {
	r := rand.New(rand.NewPCG(3, 4))
	var out []string
	for range 200 {
		var b strings.Builder
		b.WriteString("Summarize this sales export:\n\ndate,region,product,units,unit_price,revenue,margin\n")
		for range 20 + r.IntN(40) {
			units := 1 + r.IntN(500)
			price := float64(500+r.IntN(20000)) / 100
			fmt.Fprintf(&b, "2024-%02d-%02d,%s,%s,%d,%.2f,%.2f,%.3f\n", 1+r.IntN(12), 1+r.IntN(28),
				regions[r.IntN(len(regions))], products[r.IntN(len(products))], units, price, float64(units)*price, r.Float64()*0.4)
		}
		out = append(out, b.String())
	}
	return out
}

// generatedMarkdown returns a Markdown report with tables.
func generatedMarkdown() string {
	r := rand.New(rand.NewPCG(5, 6))
	var b strings.Builder
	for _, region := range regions {
		fmt.Fprintf(&b, "## Region %s\n\n| Product | Units | Revenue | Change |\n|---|---:|---:|---:|\n", region)
		for _, p := range products {
			fmt.Fprintf(&b, "| %s | %d | $%d,%03d | %+.1f%% |\n", p, r.IntN(5000), r.IntN(900), r.IntN(1000), r.NormFloat64()*8)
		}
		fmt.Fprintf(&b, "\n**Top city:** %s. Revenue grew in %d of %d product lines.\n\n", cities[r.IntN(len(cities))], r.IntN(8), len(products))
	}
	return b.String()
}

// mixedPool draws from every category in a fixed pseudo-random order: a
// conversation that moves between prose, code, data and languages.
func mixedPool(tb testing.TB) []string {
	var all []string
	for _, c := range corpusCategories() {
		if c.name == "mixed" {
			continue
		}
		all = append(all, c.pool(tb)...)
	}
	r := rand.New(rand.NewPCG(7, 8))
	r.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all
}
