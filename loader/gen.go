// Package loader loads the datapath object into the kernel, attaches its
// programs to interfaces (tcx, else clsact + cls_bpf) and pins what must
// outlive the agent. It is the only package that embeds the ELF.
package loader

// The object is built by Debian's clang-19 against the headers vendored in
// bpf/include, and committed, so `go build` needs no clang. CI regenerates it
// and fails when the result differs from what is committed.
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -output-stem ipmasq -cflags "-O2 -g -Wall -Werror -nostdinc -I../bpf/include -mcpu=v3" -target bpfel -type ipm_kind -type ipm_dir -type ipm_cidr_origin -type ipm_entry_flags BPF ../bpf/masquerade.c

// The same source again with IPM_KERN_CTX: transport checksums by arithmetic
// where the skb's checksum state is readable (kfunc bpf_cast_to_kern_ctx,
// 6.2+, and kernel BTF); Open tries it first (variant.go).
//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -output-stem ipmasqkern -no-global-types -cflags "-O2 -g -Wall -Werror -nostdinc -I../bpf/include -mcpu=v3 -DIPM_KERN_CTX" -target bpfel BPFKern ../bpf/masquerade.c
