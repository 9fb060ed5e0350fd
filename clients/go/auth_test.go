package comfyreality

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// writeCert signs a certificate for template with parent's key (self-signed when parent is
// nil) and writes NAME.pem and NAME.key into dir.
func writeCert(t *testing.T, dir, name string, template *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = template, key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, kind string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".pem", "CERTIFICATE", der)
	write(name+".key", "PRIVATE KEY", keyDER)
	return cert, key
}

func sha256Hex(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func TestAPIKeysTLSAndClientCertificates(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, caKey := writeCert(t, dir, "ca", &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	writeCert(t, dir, "server", &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	writeCert(t, dir, "alice", &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "alice.internal"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	aliceKey, bobKey := "go-alice-key-0123456789", "go-bob-key-0123456789"
	config := fmt.Sprintf(`
[service]
data_dir = %q
[runtime]
enable_metrics = false
[scheduling]
probe_interval_seconds = 0.1
[[servers]]
url = %q
[auth]
mode = "api_key_or_mtls"
[[auth.principals]]
name = "alice"
tenant = "studio-a"
role = "submitter"
api_key_sha256 = [%q]
cert_names = ["alice.internal"]
[[auth.principals]]
name = "bob"
tenant = "studio-b"
role = "submitter"
api_key_sha256 = [%q]
[tls]
cert_file = "server.pem"
key_file = "server.key"
client_ca_file = "ca.pem"
`, filepath.Join(dir, "data"), comfyURL, sha256Hex(aliceKey), sha256Hex(bobKey))
	configPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	server, line, err := startProcess(dir, "secured", serverBin, "--config", configPath,
		"serve", "--listen", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start the secured server: %v", err)
	}
	defer server.stop()
	addr, err := cutPrefix(line, "comfy-reality listening on ")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	target := net.JoinHostPort("localhost", port)
	ctx := testContext(t, 60*time.Second)

	caOnly, err := LoadTLSConfig(filepath.Join(dir, "ca.pem"), "", "")
	if err != nil {
		t.Fatal(err)
	}
	alice, err := Dial(ctx, target, WithTLS(caOnly), WithAPIKey(aliceKey))
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	execution, err := alice.Execute(ctx, imageWorkflow("go-auth", 7691863))
	if err != nil {
		t.Fatalf("Execute with a key over TLS: %v", err)
	}
	if _, err := alice.Wait(ctx, execution.GetId()); err != nil {
		t.Fatalf("Wait: %v", err)
	}

	bob, err := Dial(ctx, target, WithTLS(caOnly), WithAPIKey(bobKey))
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	_, err = bob.Get(ctx, execution.GetId())
	var refused *Error
	if !errors.As(err, &refused) || refused.Code != codes.NotFound {
		t.Fatalf("another tenant's Get: %v, want NotFound", err)
	}

	withCert, err := LoadTLSConfig(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "alice.pem"), filepath.Join(dir, "alice.key"))
	if err != nil {
		t.Fatal(err)
	}
	byCert, err := Dial(ctx, target, WithTLS(withCert))
	if err != nil {
		t.Fatal(err)
	}
	defer byCert.Close()
	if _, err := byCert.Get(ctx, execution.GetId()); err != nil {
		t.Fatalf("Get with alice's client certificate: %v", err)
	}

	anonymous, err := Dial(ctx, target, WithTLS(caOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer anonymous.Close()
	_, err = anonymous.Get(ctx, execution.GetId())
	if !errors.As(err, &refused) || refused.Code != codes.Unauthenticated || refused.Reason != "AuthenticationError" {
		t.Fatalf("Get without credentials: %v, want Unauthenticated", err)
	}
}
