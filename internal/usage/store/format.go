package store

import (
	"bytes"
	"cmp"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// formats are the formats WriteReport writes.
var formats = []string{"table", "csv", "json"}

// metrics are the columns after the group keys, as CSV and JSON name them.
var metrics = []string{"requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
	"cached_prompt_tokens", "reasoning_tokens", "cost", "currency"}

// WriteReport writes rows, as Report returned them for groupBy, to w in
// format:
//
//   - "table": aligned text for people, a header, then the rows, then a
//     TOTAL line per currency (when grouped: ungrouped rows are the totals);
//     costs to 4 decimals, empty keys as "-".
//   - "csv": a header of the group keys and metrics names, then the rows.
//   - "json": an array of objects, each with the group keys by name, then
//     requests, errors, prompt_tokens, completion_tokens, total_tokens,
//     cached_prompt_tokens, reasoning_tokens, cost and currency.
//
// CSV and JSON costs are decimals to 9 places, trailing zeros trimmed: what
// float addition leaves past that is noise, not money.
func WriteReport(w io.Writer, rows []Row, groupBy []string, format string) error {
	switch format {
	case "table":
		return writeTable(w, rows, groupBy)
	case "csv":
		return writeCSV(w, rows, groupBy)
	case "json":
		return writeJSON(w, rows, groupBy)
	}
	return fmt.Errorf("unknown report format %q: use %s", format, strings.Join(formats, ", "))
}

// cells are a row's metrics as text, in metrics order.
func cells(r *Row, cost string) []string {
	return []string{
		strconv.FormatInt(r.Requests, 10), strconv.FormatInt(r.Errors, 10),
		strconv.FormatInt(r.PromptTokens, 10), strconv.FormatInt(r.CompletionTokens, 10),
		strconv.FormatInt(r.TotalTokens, 10), strconv.FormatInt(r.CachedPromptTokens, 10),
		strconv.FormatInt(r.ReasoningTokens, 10), cost, r.Currency,
	}
}

// decimal formats a cost for machines; see WriteReport.
func decimal(f float64) string {
	s := strconv.FormatFloat(f, 'f', 9, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		return "0"
	}
	return s
}

func writeTable(w io.Writer, rows []Row, groupBy []string) error {
	var lines [][]string
	header := make([]string, 0, len(groupBy)+len(metrics))
	for _, k := range append(slices.Clone(groupBy), metrics...) {
		header = append(header, strings.ToUpper(k))
	}
	lines = append(lines, header)
	totals := map[string]*Row{}
	for i := range rows {
		r := &rows[i]
		line := make([]string, 0, len(header))
		for _, k := range groupBy {
			line = append(line, cmp.Or(r.Keys[k], "-"))
		}
		lines = append(lines, append(line, cells(r, fmt.Sprintf("%.4f", r.Cost))...))
		t := totals[r.Currency]
		if t == nil {
			t = &Row{Currency: r.Currency}
			totals[r.Currency] = t
		}
		t.add(*r)
	}
	if len(groupBy) > 0 {
		currencies := make([]string, 0, len(totals))
		for c := range totals {
			currencies = append(currencies, c)
		}
		// By code, the currency-less (zero-cost) total last.
		slices.SortFunc(currencies, func(a, b string) int {
			if (a == "") != (b == "") {
				if a == "" {
					return 1
				}
				return -1
			}
			return strings.Compare(a, b)
		})
		for _, c := range currencies {
			line := make([]string, len(groupBy), len(header))
			line[0] = "TOTAL"
			lines = append(lines, append(line, cells(totals[c], fmt.Sprintf("%.4f", totals[c].Cost))...))
		}
	}
	for _, line := range lines[1:] {
		if c := &line[len(line)-1]; *c == "" {
			*c = "-"
		}
	}
	rightAlign(lines, len(groupBy), len(header)-1)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, line := range lines {
		if _, err := fmt.Fprintln(tw, strings.Join(line, "\t")); err != nil {
			return err
		}
	}
	return tw.Flush()
}

// rightAlign pads columns [from, to) on the left to their widest cell:
// tabwriter aligns every column one way, and numbers read best flush right.
func rightAlign(lines [][]string, from, to int) {
	for c := from; c < to; c++ {
		width := 0
		for _, l := range lines {
			width = max(width, len(l[c]))
		}
		for _, l := range lines {
			l[c] = strings.Repeat(" ", width-len(l[c])) + l[c]
		}
	}
}

func writeCSV(w io.Writer, rows []Row, groupBy []string) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(append(slices.Clone(groupBy), metrics...)); err != nil {
		return err
	}
	for i := range rows {
		r := &rows[i]
		rec := make([]string, 0, len(groupBy)+len(metrics))
		for _, k := range groupBy {
			rec = append(rec, r.Keys[k])
		}
		if err := cw.Write(append(rec, cells(r, decimal(r.Cost))...)); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// writeJSON writes the objects by hand: a map would lose the keys' order,
// and people read these too.
func writeJSON(w io.Writer, rows []Row, groupBy []string) error {
	var b bytes.Buffer
	b.WriteString("[")
	for i := range rows {
		r := &rows[i]
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n  {")
		for _, k := range groupBy {
			writeJSONString(&b, k)
			b.WriteString(":")
			writeJSONString(&b, r.Keys[k])
			b.WriteString(",")
		}
		for j, v := range cells(r, decimal(r.Cost)) {
			if j > 0 {
				b.WriteString(",")
			}
			writeJSONString(&b, metrics[j])
			b.WriteString(":")
			if metrics[j] == "currency" {
				writeJSONString(&b, v)
			} else {
				b.WriteString(v) // a number
			}
		}
		b.WriteString("}")
	}
	if len(rows) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("]\n")
	_, err := w.Write(b.Bytes())
	return err
}

// writeJSONString writes s quoted, leaving &, < and > as they are ("R&D",
// not "R\u0026D"): this JSON is not for HTML.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)       // a string always encodes, into a buffer
	b.Truncate(b.Len() - 1) // Encode's newline
}
