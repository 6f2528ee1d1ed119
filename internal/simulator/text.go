package simulator

// words are the vocabulary of generated completions. Each is exactly one token
// in both o200k_base and cl100k_base, with and without a leading space
// (TestWordsAreSingleTokens checks it), so a completion of k words is exactly k
// tokens whatever the deployment's model, and a streamed delta carries exactly
// one token. 64 words: picking one is a mask.
var words = [64]string{
	"the", "of", "and", "to", "in", "is", "that", "for",
	"it", "as", "with", "be", "by", "on", "not", "this",
	"are", "or", "from", "at", "which", "but", "have", "an",
	"they", "you", "one", "all", "we", "can", "more", "when",
	"will", "so", "data", "model", "system", "simple", "token", "stream",
	"cloud", "light", "river", "stone", "green", "quiet", "small", "world",
	"time", "water", "story", "answer", "number", "paper", "music", "table",
	"window", "market", "signal", "method", "result", "value", "field", "bridge",
}

// choiceSeed derives the seed of one choice from the request's seed, so the n
// choices of a request differ from each other but not between identical
// requests, streamed or not.
func choiceSeed(seed uint64, choice int) uint64 {
	return splitmix64(seed ^ uint64(choice+1)*0x9e3779b97f4a7c15)
}

// word returns the i-th generated token of a choice, with its leading space
// when it is not the first.
func word(choiceSeed uint64, i int) string {
	k := splitmix64(choiceSeed+uint64(i)) & 63
	if i == 0 {
		return words[k]
	}
	return spaced[k]
}

// spaced holds the words with a leading space, built once so generating a
// token never allocates.
var spaced = func() (s [64]string) {
	for i, w := range words {
		s[i] = " " + w
	}
	return s
}()

// appendCompletion appends the text of a choice of length tokens.
func appendCompletion(b []byte, choiceSeed uint64, length int) []byte {
	for i := range length {
		b = append(b, word(choiceSeed, i)...)
	}
	return b
}
