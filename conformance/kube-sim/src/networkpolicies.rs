//! NetworkPolicies (networking.k8s.io/v1), stored and served.
