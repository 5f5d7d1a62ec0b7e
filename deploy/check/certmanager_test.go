package check

import (
	"encoding/json"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// TestCertManagerObjects decodes every rendered cert-manager object with
// cert-manager's own API types, refusing unknown fields, and checks that each
// Certificate's issuer is part of the same overlay and each Secret has one
// issuer.
func TestCertManagerObjects(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := cmapi.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	dec := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	for _, name := range overlays(t) {
		t.Run(name, func(t *testing.T) {
			issuers := map[string]bool{}
			var certs []*cmapi.Certificate
			for _, o := range kustomizeBuild(t, deployPath(t, "overlays", name)) {
				if o.apiVersion() != "cert-manager.io/v1" {
					continue
				}
				data, err := json.Marshal(o)
				if err != nil {
					t.Fatal(err)
				}
				obj, _, err := dec.Decode(data, nil, nil)
				if err != nil {
					t.Errorf("%s: %v", o, err)
					continue
				}
				switch v := obj.(type) {
				case *cmapi.Issuer:
					issuers["Issuer/"+v.Name] = true
				case *cmapi.ClusterIssuer:
					issuers["ClusterIssuer/"+v.Name] = true
				case *cmapi.Certificate:
					certs = append(certs, v)
				}
			}
			secrets := map[string]string{}
			for _, c := range certs {
				ref := c.Spec.IssuerRef
				if !issuers[ref.Kind+"/"+ref.Name] {
					t.Errorf("Certificate %s: issuer %s/%s is not in the overlay", c.Name, ref.Kind, ref.Name)
				}
				if prev, dup := secrets[c.Spec.SecretName]; dup {
					t.Errorf("Certificates %s and %s both write Secret %s", prev, c.Name, c.Spec.SecretName)
				}
				secrets[c.Spec.SecretName] = c.Name
				if c.Spec.PrivateKey == nil || c.Spec.PrivateKey.RotationPolicy != cmapi.RotationPolicyAlways {
					if !c.Spec.IsCA {
						t.Errorf("Certificate %s: private key not rotated on renewal", c.Name)
					}
				}
			}
		})
	}
}
