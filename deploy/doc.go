// Package deploy holds the Kubernetes manifests of the agent (a kustomize
// base in the shape of the katalog package it replaces, the least-privilege
// and monitoring components, the uninstall DaemonSet). It has no Go code;
// its tests render the manifests offline and check them against the
// agent's flags and config parser, and the alerts and dashboard with
// promtool against the metrics the agent registers.
package deploy
