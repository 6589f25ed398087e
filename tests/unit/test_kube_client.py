"""The operator's child client: patch only real differences, back off as the API server asks.

Found on the real API server: it drops zero values of omitempty fields (`readOnly: false`,
`automountServiceAccountToken` kept, but `optional: false` gone), so comparing them as values made
the operator re-patch every Job on every reconcile.
"""

from __future__ import annotations

from kubetune_operator.kube import _differs


def test_zero_values_the_server_drops_are_no_difference() -> None:
    want = {"volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": False}], "replicas": 0}
    have = {"volumeMounts": [{"name": "data", "mountPath": "/data"}], "dnsPolicy": "ClusterFirst"}
    assert not _differs(want, have)


def test_real_changes_are_differences() -> None:
    assert _differs({"suspend": True}, {"suspend": False})
    assert _differs({"suspend": True}, {})
    assert _differs({"args": ["a", "b"]}, {"args": ["a"]})
    assert _differs({"readOnly": False}, {"readOnly": True})


def test_retry_after_is_honoured_and_bounded() -> None:
    from kubetune_operator.kube import retry_delay

    assert retry_delay("3") == 3.0
    assert retry_delay(None) == 1.0
    assert retry_delay("3600") == 60.0  # never park a reconcile for an hour on one header
    assert retry_delay("Wed, 21 Oct 2026 07:28:00 GMT") == 1.0  # the HTTP-date form: use the default
