// Command hawser-test-idp is the OpenID provider of Hawser's end-to-end tests: zitadel/oidc v3's
// example provider (authorization code with PKCE, device authorization grant, refresh tokens, its
// login and device forms) served over TLS on a port it picks, with what the tests need around it:
// users with groups, short token lifetimes, expiring refresh tokens, signing-key rotation, and a
// CI token endpoint shaped like GitHub Actions' (ACTIONS_ID_TOKEN_REQUEST_URL).
//
// It prints one line `issuer URL` on stdout once it serves.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on (port 0: a free one)")
	host := flag.String("host", "127.0.0.1", "host name in the issuer URL (the certificate must name it)")
	cert := flag.String("tls-cert", "", "PEM certificate chain (required)")
	key := flag.String("tls-key", "", "PEM private key (required)")
	idTokenLifetime := flag.Duration("id-token-lifetime", time.Hour, "lifetime of ID tokens")
	refreshLifetime := flag.Duration("refresh-token-lifetime", 5*time.Hour, "refresh tokens expire this long after the login")
	ciToken := flag.String("ci-request-token", "", "bearer token /ci/token requires (empty: the endpoint is off)")
	var users, clients listFlag
	flag.Var(&users, "user", "NAME:PASSWORD[:GROUP,GROUP...]; repeatable")
	flag.Var(&clients, "client", "public (PKCE) client id: code, device and refresh grants, loopback redirects; repeatable")
	flag.Parse()
	if *cert == "" || *key == "" || len(users) == 0 || len(clients) == 0 {
		fmt.Fprintln(os.Stderr, "hawser-test-idp: -tls-cert, -tls-key, -user and -client are required")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fail(err)
	}
	port := listener.Addr().(*net.TCPAddr).Port
	// The trailing slash is part of the issuer: the example provider serves it so.
	issuer := fmt.Sprintf("https://%s:%d/", *host, port)

	for _, id := range clients {
		// Native: public, PKCE, any loopback port (RFC 8252 7.3).
		storage.RegisterClients(storage.NativeClient(id, "http://127.0.0.1/callback", "http://localhost/callback"))
	}
	userMap := map[string]*storage.User{}
	groups := map[string][]string{}
	for _, spec := range users {
		parts := strings.SplitN(spec, ":", 3)
		if len(parts) < 2 {
			fail(fmt.Errorf("-user %q: want NAME:PASSWORD[:GROUPS]", spec))
		}
		// The id is the name: the example's device flow completes with the username as subject.
		userMap[parts[0]] = &storage.User{
			ID: parts[0], Username: parts[0], Password: parts[1], FirstName: parts[0],
			Email: parts[0] + "@example.com", EmailVerified: true, PreferredLanguage: language.English,
		}
		if len(parts) == 3 && parts[2] != "" {
			groups[parts[0]] = strings.Split(parts[2], ",")
		}
	}
	usersFile, err := os.CreateTemp("", "hawser-test-idp-users-*.json")
	if err != nil {
		fail(err)
	}
	defer os.Remove(usersFile.Name())
	if err := json.NewEncoder(usersFile).Encode(userMap); err != nil {
		fail(err)
	}
	usersFile.Close()
	userStore, err := storage.StoreFromFile(usersFile.Name())
	if err != nil {
		fail(err)
	}

	s := &store{
		Storage:         storage.NewStorage(userStore),
		groups:          groups,
		idTokenLifetime: *idTokenLifetime,
		refreshLifetime: *refreshLifetime,
		refreshIssued:   map[string]time.Time{},
	}
	s.rotate()
	router := exampleop.SetupServer(issuer, s, logger, false)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /test/rotate", func(w http.ResponseWriter, r *http.Request) {
		kid := s.rotate()
		fmt.Fprintln(w, kid)
	})
	if *ciToken != "" {
		mux.HandleFunc("GET /ci/token", func(w http.ResponseWriter, r *http.Request) { s.ciToken(w, r, issuer, *ciToken) })
	}
	mux.Handle("/", router)

	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("issuer %s\n", issuer)
	if err := server.ServeTLS(listener, *cert, *key); err != http.ErrServerClosed {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hawser-test-idp:", err)
	os.Exit(1)
}

// store is the example's in-memory storage with the tests' additions.
type store struct {
	*storage.Storage
	groups          map[string][]string
	idTokenLifetime time.Duration
	refreshLifetime time.Duration

	mu            sync.Mutex
	keys          []*signingKey // the last signs; all are published
	refreshIssued map[string]time.Time
}

type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

type publicKey struct{ *signingKey }

func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.key.PublicKey }

// rotate makes a new signing key; the old ones stay published, as a provider rotating keys does.
func (s *store) rotate() string {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		fail(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := &signingKey{id: uuid.NewString(), key: key}
	s.keys = append(s.keys, k)
	return k.id
}

func (s *store) current() *signingKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[len(s.keys)-1]
}

func (s *store) SigningKey(context.Context) (op.SigningKey, error) { return s.current(), nil }

func (s *store) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *store) KeySet(context.Context) ([]op.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]op.Key, 0, len(s.keys))
	for _, k := range s.keys {
		keys = append(keys, publicKey{k})
	}
	return keys, nil
}

// SetUserinfoFromRequest adds the user's groups to the ID token.
func (s *store) SetUserinfoFromRequest(ctx context.Context, userinfo *oidc.UserInfo, token op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, userinfo, token, scopes); err != nil {
		return err
	}
	if g, ok := s.groups[token.GetSubject()]; ok {
		userinfo.AppendClaims("groups", g)
	}
	return nil
}

func (s *store) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	c, err := s.Storage.GetClientByClientID(ctx, id)
	if err != nil {
		return nil, err
	}
	return client{Client: c, lifetime: s.idTokenLifetime}, nil
}

// client lets the native client use the device grant too, with the configured ID token lifetime.
type client struct {
	op.Client
	lifetime time.Duration
}

func (c client) IDTokenLifetime() time.Duration { return c.lifetime }
func (c client) GrantTypes() []oidc.GrantType {
	return append(c.Client.GrantTypes(), oidc.GrantTypeDeviceCode)
}

func (s *store) CreateAccessAndRefreshTokens(ctx context.Context, request op.TokenRequest, current string) (string, string, time.Time, error) {
	// The example keeps no client id for a device grant, so its refresh token would match no
	// client: hand it the request as the code flow's.
	if device, ok := request.(*op.DeviceAuthorizationState); ok {
		request = &storage.AuthRequest{ApplicationID: device.ClientID, UserID: device.Subject, Scopes: device.Scopes}
	}
	access, refresh, exp, err := s.Storage.CreateAccessAndRefreshTokens(ctx, request, current)
	if err == nil {
		// A rotated refresh token keeps the login's time: the lifetime counts from the login.
		s.mu.Lock()
		issued, ok := s.refreshIssued[current]
		if !ok {
			issued = time.Now()
		}
		s.refreshIssued[refresh] = issued
		s.mu.Unlock()
	}
	return access, refresh, exp, err
}

func (s *store) TokenRequestByRefreshToken(ctx context.Context, token string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	issued, ok := s.refreshIssued[token]
	s.mu.Unlock()
	if ok && time.Since(issued) > s.refreshLifetime {
		return nil, fmt.Errorf("expired refresh token")
	}
	return s.Storage.TokenRequestByRefreshToken(ctx, token)
}

// ciToken answers as GitHub Actions' ID token endpoint does: `GET ?audience=A` with the job's
// bearer token gives `{"value": JWT}`; the other query parameters become claims (sub included).
func (s *store) ciToken(w http.ResponseWriter, r *http.Request, issuer, bearer string) {
	given := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if subtle.ConstantTimeCompare([]byte(given), []byte(bearer)) != 1 {
		http.Error(w, "bad bearer token", http.StatusUnauthorized)
		return
	}
	now := time.Now()
	claims := map[string]any{
		"iss": issuer, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"jti": uuid.NewString(),
	}
	for name, values := range r.URL.Query() {
		if name == "audience" {
			claims["aud"] = values[0]
		} else {
			claims[name] = values[0]
		}
	}
	k := s.current()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k.key, KeyID: k.id}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	token, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]string{"value": token})
}
