// Command ip-masq-agent masquerades pod traffic leaving the node with an
// eBPF datapath, configured like kubernetes-sigs/ip-masq-agent.
//
//	ip-masq-agent [flags]          run the agent
//	ip-masq-agent cleanup [flags]  detach everything and remove the pins
//	ip-masq-agent debug [--pod ADDR] [--remote ADDR] [--state STATE] [--limit N] [-o json] [flags]
//	                               print the pinned datapath's CIDRs, NAT table and counters
//	ip-masq-agent explain SRC DST [tcp|udp|icmp [PORT]] [flags]
//	                               say whether and why such a flow is masqueraded
//	ip-masq-agent check --config FILE [flags]
//	                               validate a config file offline and print its lists
//	ip-masq-agent version          print the version it was built as
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// version is stamped at build time (-ldflags -X main.version=...).
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

// run returns the process exit code: 2 for unknown flags (as Go's flag
// package), 1 for invalid values and failures, 0 after SIGTERM.
func run(args []string) int {
	command := "run"
	if len(args) == 1 && args[0] == "version" {
		fmt.Println(version)
		return 0
	}
	if len(args) > 0 && (args[0] == "cleanup" || args[0] == "debug" || args[0] == "explain" || args[0] == "check") {
		command, args = args[0], args[1:]
	}
	fs, flags := config.NewFlagSet("ip-masq-agent")
	if command == "explain" && fs.Lookup("o") == nil {
		fs.String("o", "text", "Output format of explain: text or json (docs/json-output.md).")
	}
	var debugFlags func() (debugOptions, error)
	if command == "debug" {
		debugFlags = addDebugFlags(fs)
	}
	positional, err := parseInterleaved(fs, args, command == "explain")
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(positional) > 0 && command != "explain" {
		fmt.Fprintf(os.Stderr, "unexpected argument %q\n", positional[0])
		fs.Usage()
		return 2
	}
	// Invalid values end the process here, before the datapath is touched.
	if err := flags.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "invalid flags: %v\n", err)
		return 1
	}
	if command == "check" {
		return runCheck(os.Stdout, os.Stderr, flags)
	}
	if command == "explain" {
		// Read-only like debug.
		output := fs.Lookup("o").Value.String()
		if output != "text" && output != "json" {
			fmt.Fprintf(os.Stderr, "invalid flags: -o: %q is not text or json\n", output)
			return 1
		}
		return runExplain(os.Stdout, os.Stderr, flags.PinPath, positional, output, timeoutsOf(flags))
	}
	if command == "debug" {
		// Read-only and without the lock, so it works next to a running
		// agent; no log lines, only the report.
		o, err := debugFlags()
		if err != nil {
			fmt.Fprintf(os.Stderr, "invalid flags: %v\n", err)
			return 1
		}
		o.timeouts = timeoutsOf(flags)
		return runDebug(os.Stdout, os.Stderr, flags.PinPath, o)
	}
	defer klog.Flush()
	klog.InfoS("Starting ip-masq-agent", "version", version, "command", command)
	config.LogFlags(fs)

	if command == "cleanup" {
		if err := loader.Cleanup(flags.PinPath); err != nil {
			klog.ErrorS(err, "Cleanup failed")
			return 1
		}
		return 0
	}

	// SIGTERM ends the agent promptly and leaves the datapath attached and
	// pinned: the next agent takes over from it without a gap.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runAgent(ctx, flags); err != nil {
		klog.ErrorS(err, "Agent failed")
		return 1
	}
	klog.InfoS("Stopping; the datapath stays attached")
	return 0
}

// parseInterleaved parses flags that may stand before, between and after
// positional arguments (explain SRC DST tcp 443 -o json) when positional is
// true; else it parses as Go's flag package does. It returns the positional
// arguments.
func parseInterleaved(fs *flag.FlagSet, args []string, positional bool) ([]string, error) {
	var out []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if !positional || fs.NArg() == 0 {
			return append(out, fs.Args()...), nil
		}
		out = append(out, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
