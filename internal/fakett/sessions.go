package fakett

import (
	"fmt"
	"io"
	"time"
)

// expirationLayout is how the API writes tokenExpiration and
// refreshTokenExpiration, e.g. "2018-04-02T21:39:12+00:00".
const expirationLayout = "2006-01-02T15:04:05-07:00"

// session is one auth session: a login and the chain of refreshes after it.
type session struct {
	guid          string    // the session's id, reported as guid
	username      string    // who logged in
	revoked       bool      // RevokeAll ended it: its tokens are all rejected
	bearerExpires time.Time // when its newest bearer token expires
}

// bearerToken is what the server knows of one bearer token.
type bearerToken struct {
	session *session  // the session it belongs to
	expires time.Time // server clock time from which it is rejected
}

// refreshToken is what the server knows of one refresh token.
type refreshToken struct {
	session *session  // the session it continues
	expires time.Time // server clock time from which it is rejected
	spent   bool      // a refresh already used it
}

// grant is a freshly issued pair of tokens and how the API reports them.
type grant struct {
	session           *session // the session the tokens belong to
	bearer            string   // the new bearer token
	refresh           string   // the new refresh token
	lifetime          int64    // reported tokenLifetime, whole seconds
	tokenExpiration   string   // reported tokenExpiration (skewed clock)
	refreshExpiration string   // reported refreshTokenExpiration (skewed clock)
}

// body is the session response for g, exactly as the API documents it.
func (g grant) body() map[string]any {
	return map[string]any{
		"success":                true,
		"guid":                   g.session.guid,
		"token":                  g.bearer,
		"tokenExpiration":        g.tokenExpiration,
		"tokenLifetime":          g.lifetime,
		"refreshToken":           g.refresh,
		"refreshTokenExpiration": g.refreshExpiration,
	}
}

// newToken returns a random string shaped like a version 4 UUID, as the API's
// guids and tokens are. s.mu must be held.
func (s *Server) newToken() string {
	var b [16]byte
	_, _ = io.ReadFull(s.random, b[:]) // crypto/rand never fails; a seeded source neither
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// startSession starts a session for username and issues its first tokens.
// s.mu must be held.
func (s *Server) startSession(username string) grant {
	sess := &session{guid: s.newToken(), username: username}
	s.sessions = append(s.sessions, sess)
	return s.issue(sess)
}

// issue gives sess a new bearer token and a new refresh token. s.mu must be
// held.
func (s *Server) issue(sess *session) grant {
	now := s.now()
	reported := now.Add(s.skew).UTC()
	g := grant{
		session:           sess,
		bearer:            s.newToken(),
		refresh:           s.newToken(),
		lifetime:          int64(s.tokenLifetime / time.Second),
		tokenExpiration:   reported.Add(s.tokenLifetime).Format(expirationLayout),
		refreshExpiration: reported.Add(s.refreshLifetime).Format(expirationLayout),
	}
	sess.bearerExpires = now.Add(s.tokenLifetime)
	s.bearers[g.bearer] = &bearerToken{session: sess, expires: sess.bearerExpires}
	s.refreshes[g.refresh] = &refreshToken{session: sess, expires: now.Add(s.refreshLifetime)}
	return g
}

// bearerProblem returns why token is not accepted, or "" when it is live.
// s.mu must be held.
func (s *Server) bearerProblem(token string) string {
	b, ok := s.bearers[token]
	switch {
	case token == "":
		return "missing bearer token"
	case !ok:
		return "invalid token"
	case b.session.revoked:
		return "session revoked"
	case !s.now().Before(b.expires):
		return "token expired"
	}
	return ""
}

// RevokeAll revokes every existing session: their bearer and refresh tokens
// are rejected with 401 from now on. Later logins are unaffected.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.sessions {
		sess.revoked = true
	}
}

// NewSession starts a session for username as if someone had logged in
// elsewhere, and returns its current refresh token (to seed a client). It is
// not counted in Stats. It fails for a user the server does not know.
func (s *Server) NewSession(username string) (refreshToken string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[username]; !ok {
		return "", fmt.Errorf("unknown user %q", username)
	}
	return s.startSession(username).refresh, nil
}

// Live reports whether bearer token is currently accepted: known, unexpired on
// the server clock, and its session not revoked.
func (s *Server) Live(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bearerProblem(token) == ""
}

// IssuedSecrets returns every bearer token, refresh token and session guid
// the server has issued, live or not, so a test can check that none of them
// reached a log or an error.
func (s *Server) IssuedSecrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.bearers)+len(s.refreshes)+len(s.sessions))
	for t := range s.bearers {
		out = append(out, t)
	}
	for t := range s.refreshes {
		out = append(out, t)
	}
	for _, sess := range s.sessions {
		out = append(out, sess.guid)
	}
	return out
}
