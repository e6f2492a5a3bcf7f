package main

import (
	"fmt"
	"math"
	"sort"
)

// sample is the repeated measurements of one figure, in collection order.
type sample []float64

func (s sample) sorted() []float64 {
	c := append([]float64(nil), s...)
	sort.Float64s(c)
	return c
}

// quantile interpolates linearly between closest ranks (q in [0, 1]).
func (s sample) quantile(q float64) float64 {
	c := s.sorted()
	if len(c) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(c)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return c[lo] + (c[hi]-c[lo])*(pos-float64(lo))
}

func (s sample) median() float64 { return s.quantile(0.5) }
func (s sample) min() float64    { return s.quantile(0) }
func (s sample) max() float64    { return s.quantile(1) }

// spread formats min-max and the interquartile range, in the unit of format.
func (s sample) spread(format func(float64) string) string {
	if len(s) == 0 {
		return "-"
	}
	if len(s) < 4 {
		return fmt.Sprintf("%s-%s (n=%d)", format(s.min()), format(s.max()), len(s))
	}
	return fmt.Sprintf("%s-%s, IQR %s-%s (n=%d)", format(s.min()), format(s.max()),
		format(s.quantile(0.25)), format(s.quantile(0.75)), len(s))
}

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func fmtInt(v float64) string  { return fmt.Sprintf("%.0f", v) }
func fmt1(v float64) string    { return fmt.Sprintf("%.1f", v) }
func fmtGbps(v float64) string { return fmt.Sprintf("%.2f", v/1e9) }
func fmtMs(v float64) string   { return fmt.Sprintf("%.1f", v) }
