package teletracker

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

// teletrackerConfig is the mount's stored configuration. The password is kept
// so the engine can log in again by itself; it is never returned.
type teletrackerConfig struct {
	BaseURL        string        `json:"base_url"`
	Username       string        `json:"username,omitempty"`
	Password       string        `json:"password,omitempty"`
	AccountID      int64         `json:"account_id,omitempty"`
	RefreshMargin  time.Duration `json:"refresh_margin"`
	RequestTimeout time.Duration `json:"request_timeout"`
	CACert         string        `json:"ca_cert,omitempty"`
}

// identity names the account the config logs in to; a session started under
// one identity is never continued under another.
func (c *teletrackerConfig) identity() string {
	return fmt.Sprintf("%s %q %d", c.BaseURL, c.Username, c.AccountID)
}

// getConfig returns the stored config, or nil, nil when there is none.
func getConfig(ctx context.Context, s logical.Storage) (*teletrackerConfig, error) {
	return getEntry[teletrackerConfig](ctx, s, configKey)
}

// putConfig stores cfg.
func putConfig(ctx context.Context, s logical.Storage, cfg *teletrackerConfig) error {
	return putEntry(ctx, s, configKey, cfg)
}

func pathConfig(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "config",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Fields: map[string]*framework.FieldSchema{
			"base_url": {
				Type:        framework.TypeString,
				Default:     defaultBaseURL,
				Description: "Teletracker API base URL. Must be https://; http:// is accepted only for loopback hosts.",
			},
			"username": {
				Type:        framework.TypeString,
				Description: "Teletracker user to log in as.",
			},
			"password": {
				Type:        framework.TypeString,
				Description: "Password of username. Write-only; stored so the engine can log in again when the session is lost. An empty value removes it.",
				DisplayAttrs: &framework.DisplayAttributes{
					Sensitive: true,
				},
			},
			"account_id": {
				Type:        framework.TypeInt,
				Description: "Teletracker account to log in to, when the user can reach several. 0 removes it.",
			},
			"refresh_token": {
				Type:        framework.TypeString,
				Description: "Write-only. Seeds an existing Teletracker session instead of logging in; spent at once for a fresh token.",
				DisplayAttrs: &framework.DisplayAttributes{
					Sensitive: true,
				},
			},
			"refresh_margin": {
				Type:        framework.TypeDurationSecond,
				Default:     int(defaultRefreshMargin.Seconds()),
				Description: "Replace the bearer token when less than this is left (below 24h). When the token lifetime is under twice the margin, half the lifetime is used.",
			},
			"request_timeout": {
				Type:        framework.TypeDurationSecond,
				Default:     int(defaultRequestTimeout.Seconds()),
				Description: fmt.Sprintf("Timeout of each call to Teletracker (at most %s).", maxRequestTimeout),
			},
			"ca_cert": {
				Type:        framework.TypeString,
				Description: "PEM-encoded CA certificate(s) trusted for Teletracker's TLS, in addition to the system roots. An empty value removes it.",
			},
		},
		ExistenceCheck: b.pathConfigExistenceCheck,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathConfigRead,
				Summary:  "Read the configuration, without secrets.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "read",
					OperationSuffix: "configuration",
				},
				Responses: map[int][]framework.Response{
					http.StatusOK: {{
						Description: "OK",
						Fields:      configResponseFields,
					}},
				},
			},
			logical.CreateOperation: b.configWriteOperation(),
			logical.UpdateOperation: b.configWriteOperation(),
			logical.DeleteOperation: &framework.PathOperation{
				Callback: b.pathConfigDelete,
				Summary:  "Delete the configuration and the session.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "delete",
					OperationSuffix: "configuration",
				},
				Responses: map[int][]framework.Response{
					http.StatusNoContent: {{Description: "No Content"}},
				},
				ForwardPerformanceStandby:   true,
				ForwardPerformanceSecondary: true,
			},
		},
		HelpSynopsis:    pathConfigHelpSyn,
		HelpDescription: pathConfigHelpDesc,
	}
}

func (b *backend) configWriteOperation() *framework.PathOperation {
	return &framework.PathOperation{
		Callback: b.pathConfigWrite,
		Summary:  "Configure the Teletracker account and establish its session.",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationVerb: "configure",
		},
		Responses: map[int][]framework.Response{
			http.StatusNoContent: {{Description: "No Content"}},
		},
		ForwardPerformanceStandby:   true,
		ForwardPerformanceSecondary: true,
	}
}

// configResponseFields are the fields a config read returns.
var configResponseFields = map[string]*framework.FieldSchema{
	"base_url":        {Type: framework.TypeString, Required: true},
	"username":        {Type: framework.TypeString},
	"account_id":      {Type: framework.TypeInt},
	"refresh_margin":  {Type: framework.TypeDurationSecond, Required: true},
	"request_timeout": {Type: framework.TypeDurationSecond, Required: true},
	"ca_cert":         {Type: framework.TypeString},
	"password_set":    {Type: framework.TypeBool, Required: true},
}

func (b *backend) pathConfigExistenceCheck(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	cfg, err := getConfig(ctx, req.Storage)
	return cfg != nil, err
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	cfg, err := getConfig(ctx, req.Storage)
	if err != nil || cfg == nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]interface{}{
		"base_url":        cfg.BaseURL,
		"username":        cfg.Username,
		"account_id":      cfg.AccountID,
		"refresh_margin":  int64(cfg.RefreshMargin.Seconds()),
		"request_timeout": int64(cfg.RequestTimeout.Seconds()),
		"ca_cert":         cfg.CACert,
		"password_set":    cfg.Password != "",
	}}, nil
}

// pathConfigWrite merges the fields sent into the stored config and, when the
// write changes who or where the engine logs in to (or brings a password or a
// refresh token), establishes the new session before anything is stored. A
// write that fails leaves the previous config and session as they were.
func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()

	epoch := b.epoch.Load()
	old, err := getConfig(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	cur, err := b.currentSession(ctx, req.Storage)
	if err != nil {
		return nil, err
	}
	// A session started under another identity (a write failed half-way)
	// is no session for this config.
	w, err := parseConfigWrite(old, d, cur != nil && old != nil && cur.belongsTo(old))
	if err != nil {
		return logical.ErrorResponse(err.Error()), logical.ErrInvalidRequest
	}
	next, warning := cur, ""
	if w.newSession {
		if next, warning, err = b.establish(ctx, req.Storage, w, cur); err != nil {
			return configWriteError(err)
		}
	}
	if err := putConfig(ctx, req.Storage, w.cfg); err != nil {
		b.Logger().Error("config not stored", "error", err)
		if next != cur {
			b.restoreSession(ctx, req.Storage, cur)
		}
		return nil, fmt.Errorf("storing the config failed: %w", err)
	}
	b.publish(epoch, next, w.cfg)
	b.Logger().Info("config written", "base_url", w.cfg.BaseURL, "username", w.cfg.Username, "new_session", w.newSession)
	if warning != "" {
		return &logical.Response{Warnings: []string{warning}}, nil
	}
	return nil, nil
}

// restoreSession puts back the session a failed config write replaced, so
// that config and session still belong together. Should that fail too, the
// session's identity keeps its refresh token away from the old config's
// server (see session.under).
func (b *backend) restoreSession(ctx context.Context, storage logical.Storage, prev *session) {
	var err error
	if prev == nil {
		err = storage.Delete(ctx, sessionKey)
	} else {
		err = b.storeSession(ctx, storage, prev)
	}
	if err != nil {
		b.Logger().Error("putting back the previous session failed", "error", err)
	}
}

// configWriteError turns an error from establishing a session into the
// response an operator should see.
func configWriteError(err error) (*logical.Response, error) {
	var ue *upstreamError
	var rl *rateLimitedError
	switch {
	case errors.As(err, &ue) && ue.class == failRejected:
		return logical.ErrorResponse("Teletracker refused the credentials: %s", ue.Error()), logical.ErrInvalidRequest
	case errors.As(err, &ue):
		return nil, logical.CodedError(http.StatusBadGateway, "cannot establish a session: "+ue.Error())
	case errors.As(err, &rl):
		return nil, logical.CodedError(http.StatusTooManyRequests, rl.Error())
	}
	return nil, err
}

func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	b.unsaved.Store(nil)
	if err := req.Storage.Delete(ctx, sessionKey); err != nil {
		return nil, fmt.Errorf("deleting session: %w", err)
	}
	if err := req.Storage.Delete(ctx, configKey); err != nil {
		return nil, fmt.Errorf("deleting config: %w", err)
	}
	b.served.Store(nil)
	b.Logger().Info("config and session deleted")
	return nil, nil
}

// configWrite is a validated config write.
type configWrite struct {
	// cfg is the config to store.
	cfg *teletrackerConfig
	// refreshToken, when set, seeds the session instead of a login.
	refreshToken string
	// newSession is set when the write must establish a session first.
	newSession bool
}

// parseConfigWrite merges the fields in d over old (nil for a first write)
// and validates the result; haveSession says whether a session is stored.
// Its errors are the caller's mistakes.
func parseConfigWrite(old *teletrackerConfig, d *framework.FieldData, haveSession bool) (*configWrite, error) {
	cfg := &teletrackerConfig{
		BaseURL:        defaultBaseURL,
		RefreshMargin:  defaultRefreshMargin,
		RequestTimeout: defaultRequestTimeout,
	}
	if old != nil {
		*cfg = *old
	}
	w := &configWrite{cfg: cfg, newSession: old == nil || !haveSession}

	if v, ok := d.GetOk("base_url"); ok {
		u, err := parseBaseURL(v.(string))
		if err != nil {
			return nil, err
		}
		cfg.BaseURL = u
	}
	if v, ok := d.GetOk("username"); ok {
		cfg.Username = strings.TrimSpace(v.(string))
	}
	if v, ok := d.GetOk("password"); ok {
		cfg.Password = v.(string)
		w.newSession = w.newSession || cfg.Password != ""
	}
	if v, ok := d.GetOk("account_id"); ok {
		if v.(int) < 0 {
			return nil, errors.New("account_id must not be negative")
		}
		cfg.AccountID = int64(v.(int))
	}
	if v, ok := d.GetOk("refresh_token"); ok {
		w.refreshToken = strings.TrimSpace(v.(string))
		if w.refreshToken == "" {
			return nil, errors.New("refresh_token must not be empty")
		}
		w.newSession = true
	}
	if v, ok := d.GetOk("refresh_margin"); ok {
		cfg.RefreshMargin = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("request_timeout"); ok {
		cfg.RequestTimeout = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("ca_cert"); ok {
		cfg.CACert = strings.TrimSpace(v.(string))
	}

	switch {
	case cfg.RefreshMargin <= 0:
		return nil, errors.New("refresh_margin must be a positive duration of at least 1s, such as 10m")
	case cfg.RefreshMargin >= maxRefreshMargin:
		return nil, fmt.Errorf("refresh_margin must be below %s", maxRefreshMargin)
	case cfg.RequestTimeout <= 0:
		return nil, errors.New("request_timeout must be a positive duration of at least 1s, such as 10s")
	case cfg.RequestTimeout > maxRequestTimeout:
		return nil, fmt.Errorf("request_timeout must be at most %s, to stay well under Vault's request timeout", maxRequestTimeout)
	}
	if cfg.CACert != "" {
		if err := checkCACert(cfg.CACert); err != nil {
			return nil, err
		}
	}
	if cfg.Password != "" && cfg.Username == "" {
		return nil, errors.New("password needs a username")
	}

	// A change of where or as whom the engine logs in makes the old session
	// the wrong one.
	if old != nil && (cfg.BaseURL != old.BaseURL || cfg.Username != old.Username || cfg.AccountID != old.AccountID) {
		w.newSession = true
	}
	if w.newSession && w.refreshToken == "" && (cfg.Username == "" || cfg.Password == "") {
		return nil, errors.New("username and password are required to log in (or give refresh_token to seed an existing session)")
	}
	return w, nil
}

// parseBaseURL checks that raw is an https URL, or http on a loopback host,
// and returns it without a trailing slash.
func parseBaseURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return "", errors.New("base_url must be an absolute URL such as https://api.teletracker.net")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("base_url must not hold credentials, a query or a fragment")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return "", errors.New("base_url must use https://; http:// is only accepted for loopback hosts (127.0.0.0/8, ::1, localhost)")
		}
	default:
		return "", errors.New("base_url must use https://")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// isLoopback reports whether host is localhost or a loopback IP address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkCACert checks that pem holds only certificates, at least one.
func checkCACert(data string) error {
	rest := []byte(data)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("ca_cert holds a %q PEM block; only CERTIFICATE blocks are accepted", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("ca_cert holds a certificate that does not parse: %v", err)
		}
		n++
	}
	if n == 0 || strings.TrimSpace(string(rest)) != "" {
		return errors.New("ca_cert must be one or more PEM-encoded certificates")
	}
	return nil
}

const pathConfigHelpSyn = `Configure the Teletracker account whose session this mount keeps alive.`

const pathConfigHelpDesc = `
Writing username and password logs in to Teletracker at once; writing
refresh_token instead seeds an existing session (it is spent at once for a new
one). The write fails, and changes nothing, when Teletracker refuses.

A write is a partial update: fields not sent keep their values. Changing
base_url, username or account_id starts a new session, so it needs the
password (stored or sent) or a refresh_token.

password and refresh_token are never returned; a read shows password_set.
Deleting the config also deletes the session.
`
