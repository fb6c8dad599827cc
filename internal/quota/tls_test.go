package quota

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/fusioo-gateway/gateway/internal/testutil/redistest"
)

// testCA makes a CA and certificates it signs, as PEM files in dir.
type testCA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{dir: dir, cert: cert, key: key}
	ca.write(t, name+".pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(t *testing.T, file, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(ca.dir, file)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issue writes a certificate for name (a server's DNS name, or a client)
// and its key; it returns their paths.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return ca.write(t, name+".crt", "CERTIFICATE", der), ca.write(t, name+".key", "EC PRIVATE KEY", kder)
}

// TestRedisMutualTLS: a redis-server that requires client certificates
// (tls-auth-clients yes) is reached with redis.ca_file (a private CA),
// redis.cert_file / key_file and redis.server_name; without the client
// certificate, or trusting another CA, it is not.
func TestRedisMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir, "test-ca")
	newTestCA(t, dir, "other-ca")
	srvCert, srvKey := ca.issue(t, "redis.test", x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := ca.issue(t, "gateway", x509.ExtKeyUsageClientAuth)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	redistest.Start(t, "--tls-port", strconv.Itoa(port), "--tls-cert-file", srvCert, "--tls-key-file", srvKey,
		"--tls-ca-cert-file", filepath.Join(dir, "test-ca.pem"), "--tls-auth-clients", "yes")
	url := "rediss://127.0.0.1:" + strconv.Itoa(port)
	p := Policy{Limit: 5, Window: time.Minute, Buckets: DefaultBuckets}
	take := func(o RedisClientOptions) error {
		o.URL, o.Timeout = url, time.Second
		c, err := NewRedisClient(o)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = NewRedisStore(c, p, redisOptions(time.Second, false)).Take(context.Background(), redisTestKey(t, "k"), Take{})
		return err
	}
	caFile := filepath.Join(dir, "test-ca.pem")
	if err := take(RedisClientOptions{CAFile: caFile, CertFile: cliCert, KeyFile: cliKey, ServerName: "redis.test"}); err != nil {
		t.Fatalf("mutual TLS: %v", err)
	}
	if err := take(RedisClientOptions{CAFile: caFile, ServerName: "redis.test"}); err == nil {
		t.Fatal("without a client certificate: accepted")
	}
	if err := take(RedisClientOptions{CAFile: filepath.Join(dir, "other-ca.pem"), CertFile: cliCert, KeyFile: cliKey, ServerName: "redis.test"}); err == nil {
		t.Fatal("trusting another CA: accepted")
	}
	if err := take(RedisClientOptions{CAFile: caFile, CertFile: cliCert, KeyFile: cliKey, ServerName: "wrong.name"}); err == nil {
		t.Fatal("with the wrong server name: accepted")
	}
}
