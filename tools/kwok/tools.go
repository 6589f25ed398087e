//go:build tools

// Package tools pins kwok, which plays the kubelet of the test cluster's fake nodes. It lives in a
// module of its own: kwok v0.7.0 is built against the k8s.io libraries it pins (v0.33), which are
// not source-compatible with those of the control plane in ../k8s.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
