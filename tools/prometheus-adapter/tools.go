//go:build tools

// Package tools pins prometheus-adapter, the custom-metrics API server (custom.metrics.k8s.io) that
// the test control plane's HorizontalPodAutoscaler reads the serving pods' queue metric through. It
// lives in a module of its own: it is built against the k8s.io libraries it pins, not those of the
// control plane in ../k8s.
package tools

import (
	_ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
)
