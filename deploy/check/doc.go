// Package check holds the tests that check tokenwatch's deploy kit with the
// real tools: kustomize builds every overlay, helm lints and renders the chart
// for the same shapes (equal to the overlays in substance), a real
// kube-apiserver accepts the rendered objects, kubeadm validates the ClusterConfiguration, the
// audit.k8s.io/v1 types and the apiserver's own policy evaluator load the
// audit policy, a collector built with the OpenTelemetry Collector Builder
// validates and runs the collector configuration, and the container images run
// with the manifests' security settings until alerts arrive.
//
// It is a module of its own so that kustomize, the Kubernetes libraries and
// cert-manager's API types stay out of the product's go.mod. deploy/check/run.sh
// runs it.
package check
