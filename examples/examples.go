// Package examples holds the documented example configurations. The demo
// embeds its two files from here, so what the demo runs is what users read.
package examples

import _ "embed"

// Demo is the gateway config the demo runs (demo.yaml).
//
//go:embed demo.yaml
var Demo []byte

// DemoSimulator is the simulator config the demo runs (demo-simulator.yaml).
//
//go:embed demo-simulator.yaml
var DemoSimulator []byte
