// Package deploy holds the Kubernetes manifests of the agent (a kustomize
// base in the shape of the katalog package it replaces, and the
// least-privilege component). It has no Go code; its tests render the
// manifests offline and check them against the agent's flags and config
// parser.
package deploy
