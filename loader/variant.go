package loader

import (
	"fmt"
	"os"

	"github.com/cilium/ebpf"
)

// Variant names a build of the datapath object (bpf/csum_state.h).
type Variant string

const (
	// VariantAuto tries VariantKernCtx and falls back to VariantHelpers.
	VariantAuto Variant = ""
	// VariantKernCtx reads the skb's checksum state (6.2+ with kernel
	// BTF) and updates transport checksums by arithmetic.
	VariantKernCtx Variant = "kern-ctx"
	// VariantHelpers updates transport checksums with the checksum
	// helpers only: every kernel from 5.10.
	VariantHelpers Variant = "helpers"
)

// VariantEnv overrides Options.Variant when set (tests run the program
// suite once per variant; an operator may pin the portable build).
const VariantEnv = "IPM_DATAPATH_VARIANT"

// candidates returns the builds to try, in order, for the wanted variant.
func candidates(want Variant) ([]Variant, error) {
	if v := os.Getenv(VariantEnv); v != "" {
		want = Variant(v)
	}
	switch want {
	case VariantAuto:
		return []Variant{VariantKernCtx, VariantHelpers}, nil
	case VariantKernCtx, VariantHelpers:
		return []Variant{want}, nil
	}
	return nil, fmt.Errorf("unknown datapath variant %q (%s): want %q or %q", want, VariantEnv, VariantKernCtx, VariantHelpers)
}

// specOf reads the object of a variant.
func specOf(v Variant) (*ebpf.CollectionSpec, error) {
	if v == VariantKernCtx {
		return LoadBPFKern()
	}
	return LoadBPF()
}
