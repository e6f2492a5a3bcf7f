package main

import (
	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/config"
	"github.com/ipmasq-ebpf/ip-masq-agent/migrate"
)

// removeIPTablesChain removes the --masq-chain chain and its POSTROUTING
// jump that an earlier iptables ip-masq-agent left (docs/behaviour.md §12); package
// migrate logs every rule it removes.
//
// runAgent calls it once our programs are attached: until then the old
// chain is what masquerades pod traffic, so there is no moment in which
// neither does (a flow the old chain masquerades reaches our egress program
// with the node address and passes as host traffic). A failure is logged and
// the agent runs on: the old chain keeps masquerading with its old list.
func removeIPTablesChain(f *config.Flags) {
	if !f.RemoveIPTablesChain {
		klog.InfoS("Leaving any chain of the iptables ip-masq-agent in place", "chain", f.MasqChain,
			"flag", "--remove-iptables-chain=false")
		return
	}
	if _, err := migrate.Run(migrate.Options{Chain: f.MasqChain}); err != nil {
		klog.ErrorS(err, "Could not remove what the iptables ip-masq-agent left; its rules decide before this agent's")
	}
}
