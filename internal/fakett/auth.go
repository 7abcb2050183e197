package fakett

import (
	"net/http"
	"strconv"
	"strings"
)

// login answers POST /auth/login: it checks the password and, unless
// auth_only=1, starts a session.
func (s *Server) login(w http.ResponseWriter, r *http.Request) reply {
	params, rep, ok := readParams(w, r)
	if !ok {
		return rep
	}
	for _, name := range []string{"username", "password"} {
		if params[name] == "" {
			return failure(http.StatusBadRequest, "missing parameter: "+name)
		}
	}
	if _, ok := intParam(params, "account_id"); !ok {
		return failure(http.StatusBadRequest, "invalid parameter: account_id")
	}
	authOnly, ok := intParam(params, "auth_only")
	if !ok {
		return failure(http.StatusBadRequest, "invalid parameter: auth_only")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if want, known := s.users[params["username"]]; !known || want != params["password"] {
		return failure(http.StatusUnauthorized, "invalid credentials")
	}
	s.stats.Logins++
	if authOnly == 1 {
		return reply{status: http.StatusOK, body: map[string]any{"success": true}}
	}
	return reply{status: http.StatusOK, body: s.startSession(params["username"]).body()}
}

// intParam returns the optional integer parameter name, 0 when it is absent;
// ok is false when it is present but not an integer.
func intParam(params map[string]string, name string) (n int64, ok bool) {
	v, given := params[name]
	if !given {
		return 0, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// refresh answers POST /auth/refresh: it spends the presented refresh token and
// issues a new bearer token and a new refresh token in the same session.
func (s *Server) refresh(w http.ResponseWriter, r *http.Request) reply {
	rep := s.tryRefresh(w, r)
	if rep.status == http.StatusBadRequest || rep.status == http.StatusUnauthorized {
		s.mu.Lock()
		s.stats.RejectedRefreshes++
		s.mu.Unlock()
	}
	return rep
}

// tryRefresh does the work of refresh.
func (s *Server) tryRefresh(w http.ResponseWriter, r *http.Request) reply {
	params, rep, ok := readParams(w, r)
	if !ok {
		return rep
	}
	presented := params["refresh_token"]
	if presented == "" {
		return failure(http.StatusBadRequest, "missing parameter: refresh_token")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	tok, known := s.refreshes[presented]
	switch {
	case !known:
		return failure(http.StatusUnauthorized, "invalid refresh token")
	case tok.spent:
		s.stats.ReusedRefreshTokens++
		return failure(http.StatusUnauthorized, "refresh token already used")
	case tok.session.revoked:
		return failure(http.StatusUnauthorized, "session revoked")
	case !s.now().Before(tok.expires):
		return failure(http.StatusUnauthorized, "refresh token expired")
	}
	tok.spent = true
	s.stats.Refreshes++
	if !s.now().Before(tok.session.bearerExpires) {
		s.stats.LateRefreshes++
	}
	return reply{status: http.StatusOK, body: s.issue(tok.session).body()}
}

// whoami answers GET /api/whoami, the protected endpoint: it names the user
// behind a live bearer token.
func (s *Server) whoami(_ http.ResponseWriter, r *http.Request) reply {
	if r.Method != http.MethodGet {
		return methodNotAllowed(http.MethodGet)
	}
	token := ""
	if scheme, rest, found := strings.Cut(r.Header.Get("Authorization"), " "); found && strings.EqualFold(scheme, "Bearer") {
		token = strings.TrimSpace(rest)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if problem := s.bearerProblem(token); problem != "" {
		s.stats.ProtectedDenied++
		return failure(http.StatusUnauthorized, problem)
	}
	s.stats.ProtectedOK++
	sess := s.bearers[token].session
	return reply{status: http.StatusOK, body: map[string]any{"success": true, "username": sess.username, "guid": sess.guid}}
}
