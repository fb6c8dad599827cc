package config

import (
	"os"
	"testing"
)

// FuzzParse: any file either loads into a valid config or fails with
// errors; it never panics.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("../../config.example.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("[server]\nlisten = 1\n[[routes]]\nmethod=2\n"))
	f.Add([]byte("[quota]\nwindow = \"-1h\"\nlimit = 9223372036854775807\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data, nil)
		if err == nil {
			if errs := cfg.validate(); len(errs) != 0 {
				t.Fatalf("accepted an invalid config: %v", errs)
			}
		}
	})
}
