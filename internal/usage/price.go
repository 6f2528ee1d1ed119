package usage

import "github.com/tokengate/tokengate/internal/config"

// Prices maps model aliases to their price per 1M tokens. Read-only after
// NewPrices; safe for concurrent use.
type Prices map[string]config.Price

// NewPrices collects the models' prices.
func NewPrices(models []config.Model) Prices {
	p := Prices{}
	for _, m := range models {
		if m.Price != nil {
			p[m.Name] = *m.Price
		}
	}
	return p
}

// Cost prices t for the model alias: uncached prompt tokens at the input
// price, cached prompt tokens at the cached-input price, completion tokens
// (reasoning included, as Azure bills them) at the output price. An alias
// without a price costs 0.
func (p Prices) Cost(alias string, t Tokens) Cost {
	pr, ok := p[alias]
	if !ok {
		return Cost{}
	}
	cachedPrice := pr.Input
	if pr.CachedInput != nil {
		cachedPrice = *pr.CachedInput
	}
	cached := min(t.CachedPrompt, t.Prompt)
	amount := (float64(t.Prompt-cached)*pr.Input +
		float64(cached)*cachedPrice +
		float64(t.Completion)*pr.Output) / 1e6
	return Cost{Amount: amount, Currency: pr.Currency}
}
