//go:build tools

// Package tools pins the control-plane binaries that the integration tests run: the real
// kube-apiserver, kube-controller-manager and kube-scheduler of one Kubernetes release, etcd of the
// version that release is tested with (kwok is in ../kwok). scripts/control-plane.sh builds them.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
