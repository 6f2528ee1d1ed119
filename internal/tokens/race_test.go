//go:build race

package tokens

// raceEnabled reports whether the race detector is on: the slowest tests
// do less under it.
const raceEnabled = true
