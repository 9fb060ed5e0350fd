package comfyreality

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// LoadTLSConfig builds a TLS configuration for [WithTLS] from PEM files: caFile, when not
// empty, is the CA to trust instead of the system's roots (a server with a private CA);
// certFile and keyFile, when not empty, are the client certificate and its key for a server
// that takes client certificates (mTLS).
func LoadTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("comfyreality: read the CA certificate: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("comfyreality: %s holds no PEM certificate", caFile)
		}
		config.RootCAs = roots
	}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("comfyreality: load the client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return config, nil
}
