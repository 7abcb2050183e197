package teletracker

import (
	"context"
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

// config is the mount's configuration, stored in its record. The password
// is kept so the engine can log in again by itself; it is never returned.
type config struct {
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
func (c *config) identity() string {
	return fmt.Sprintf("%s %q %d", c.BaseURL, c.Username, c.AccountID)
}

// pathConfig is the config of the default account, at config, and of the
// named ones, at accounts/<name>: one set of handlers for both.
func pathConfig(b *backend) []*framework.Path {
	return []*framework.Path{
		b.configPath("config", "configuration", configFields, pathConfigHelpSyn, pathConfigHelpDesc),
		b.configPath("accounts/"+framework.MatchAllRegex("name"), "account", accountFields, pathAccountHelpSyn, pathAccountHelpDesc),
	}
}

// configPath is the config route at pattern; suffix names its operations.
func (b *backend) configPath(pattern, suffix string, fields map[string]*framework.FieldSchema, syn, desc string) *framework.Path {
	return &framework.Path{
		Pattern: pattern,
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefix,
		},
		Fields:         fields,
		ExistenceCheck: b.pathConfigExistenceCheck,
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback: b.pathConfigRead,
				Summary:  "Read the configuration, without secrets.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "read",
					OperationSuffix: suffix,
				},
				Responses: map[int][]framework.Response{
					http.StatusOK: {{
						Description: "OK",
						Fields:      configResponseFields,
					}},
				},
			},
			logical.CreateOperation: b.configWriteOperation(suffix),
			logical.UpdateOperation: b.configWriteOperation(suffix),
			logical.DeleteOperation: &framework.PathOperation{
				Callback: b.pathConfigDelete,
				Summary:  "Delete the configuration and the session.",
				DisplayAttrs: &framework.DisplayAttributes{
					OperationVerb:   "delete",
					OperationSuffix: suffix,
				},
				Responses: map[int][]framework.Response{
					http.StatusNoContent: {{Description: "No Content"}},
				},
				ForwardPerformanceStandby:   true,
				ForwardPerformanceSecondary: true,
			},
		},
		HelpSynopsis:    syn,
		HelpDescription: desc,
	}
}

// configFields are the config path's fields: built once for every mount.
var configFields = map[string]*framework.FieldSchema{
	"base_url": {
		Type:        framework.TypeString,
		Default:     defaultBaseURL,
		Description: "Teletracker API base URL. Must be https://; http:// is accepted only for loopback hosts, and is sent only to a loopback address, never through a proxy.",
	},
	"username": {
		Type:        framework.TypeString,
		Description: "Teletracker user to log in as.",
	},
	"password": {
		Type:         framework.TypeString,
		Description:  "Password of username. Write-only; stored so the engine can log in again when the session is lost. An empty value removes it.",
		DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
	},
	"account_id": {
		Type:        framework.TypeInt,
		Description: "Teletracker account to log in to, when the user can reach several. 0 removes it.",
	},
	"refresh_token": {
		Type:         framework.TypeString,
		Description:  "Write-only. Seeds an existing Teletracker session instead of logging in; spent at once for a fresh token.",
		DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
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
		Description: "PEM-encoded CA certificate(s) trusted for Teletracker's TLS, in addition to the system roots. An empty value removes it. Changing it needs password or refresh_token in the same write.",
	},
}

func (b *backend) configWriteOperation(suffix string) *framework.PathOperation {
	return &framework.PathOperation{
		Callback: b.pathConfigWrite,
		Summary:  "Configure the Teletracker account and establish its session.",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationVerb:   "configure",
			OperationSuffix: suffix,
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

// nameField is the account name in the paths of named accounts.
var nameField = &framework.FieldSchema{
	Type:        framework.TypeString,
	Description: "The account's name: 1 to 64 characters of a-z, 0-9, - and _, starting with a letter or digit.",
	Required:    true,
}

// accountFields are the fields of accounts/<name>: config's and the name.
var accountFields = withName(configFields)

// withName is fields and the name field.
func withName(fields map[string]*framework.FieldSchema) map[string]*framework.FieldSchema {
	m := map[string]*framework.FieldSchema{"name": nameField}
	for k, v := range fields {
		m[k] = v
	}
	return m
}

// configAccount is the account a config request is for, nil when it names
// one that has no config; create says to make it in memory if need be (a
// write).
func (b *backend) configAccount(ctx context.Context, req *logical.Request, create bool) (*account, error) {
	if req.Path == "config" {
		return b.def(), nil
	}
	name, err := nameIn(req.Path, "accounts")
	switch {
	case err != nil:
		return nil, err
	case create:
		return b.account(name), nil
	}
	return b.existing(ctx, req.Storage, name)
}

func (b *backend) pathConfigExistenceCheck(ctx context.Context, req *logical.Request, _ *framework.FieldData) (bool, error) {
	a, err := b.configAccount(ctx, req, false)
	var in *inputError
	switch {
	case errors.As(err, &in):
		return false, nil // a bad name is the write's to refuse
	case err != nil || a == nil:
		return false, err
	}
	r, err := a.peekRecord(ctx, req.Storage)
	return r.configured(), err
}

func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	a, err := b.configAccount(ctx, req, false)
	if err != nil || a == nil {
		return respondIfErr(triggerTune, err, b.now())
	}
	r, err := a.peekRecord(ctx, req.Storage)
	if err != nil || !r.configured() {
		return nil, err
	}
	cfg := r.Config
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

// pathConfigWrite merges the fields sent into the stored config through the
// one spend path. A write with a credential establishes the new session
// first, all or nothing, whatever its caller does once it is sent.
func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	a, err := b.configAccount(ctx, req, true)
	if err != nil {
		return respond(triggerTune, err, b.now())
	}
	asked := b.now()
	t := trigger{kind: triggerTune}
	r, err := a.apply(ctx, req.Storage, t, func(prev *record) (*record, trigger, error) {
		next, credential, err := parseConfigWrite(prev, d)
		if credential {
			t = trigger{kind: triggerCredential, at: asked}
		}
		return next, t, err
	})
	if !succeeded(err) {
		if !r.configured() {
			b.sched.set(a, b.now()) // a name refused its first write: a tick forgets it once its waits are over
		}
		return respond(t.kind, err, b.now())
	}
	a.log().Info("config written", "credential", t.kind == triggerCredential)
	if err != nil {
		return &logical.Response{Warnings: []string{err.Error()}}, nil
	}
	return nil, nil
}

// pathConfigDelete removes the config and the session, through the one
// spend path like any write. The waits set by past calls stay, alone in the
// record (in memory for a named account), so that deleting and writing
// again in a loop cannot make a storm. Teletracker has no call to end a
// session: the bearer token stays valid until it expires.
func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	a, err := b.configAccount(ctx, req, false)
	if err != nil || a == nil {
		return respondIfErr(triggerTune, err, b.now())
	}
	t := trigger{kind: triggerTune}
	if _, err := a.apply(ctx, req.Storage, t, func(prev *record) (*record, trigger, error) {
		return prev.waitsOnly(), t, nil
	}); err != nil {
		return respond(t.kind, err, b.now())
	}
	a.log().Info("config and session deleted")
	return nil, nil
}

// parseConfigWrite merges the fields in d into prev (the stored record, nil
// or without config for a first write) and validates the result. It returns
// the record to establish and whether the write brings a credential: a
// password, a refresh token, a new account or ca_cert, or a first session.
func parseConfigWrite(prev *record, d *framework.FieldData) (next *record, credential bool, err error) {
	r := &record{}
	if prev != nil {
		*r = *prev
	}
	cfg := &r.Config
	if !prev.configured() {
		*cfg = config{BaseURL: defaultBaseURL, RefreshMargin: defaultRefreshMargin, RequestTimeout: defaultRequestTimeout}
		credential = true
	}
	old := *cfg

	if v, ok := d.GetOk("base_url"); ok {
		if cfg.BaseURL, err = parseBaseURL(v.(string)); err != nil {
			return nil, false, err
		}
	}
	if v, ok := d.GetOk("username"); ok {
		cfg.Username = strings.TrimSpace(v.(string))
	}
	passwordSent := false
	if v, ok := d.GetOk("password"); ok {
		cfg.Password = v.(string)
		passwordSent = cfg.Password != ""
	}
	if v, ok := d.GetOk("account_id"); ok {
		if v.(int) < 0 {
			return nil, false, invalid("account_id must not be negative")
		}
		cfg.AccountID = int64(v.(int))
	}
	seed := ""
	if v, ok := d.GetOk("refresh_token"); ok {
		if seed = strings.TrimSpace(v.(string)); seed == "" {
			return nil, false, invalid("refresh_token must not be empty")
		}
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
		return nil, false, invalid("refresh_margin must be a positive duration of at least 1s, such as 10m")
	case cfg.RefreshMargin >= maxRefreshMargin:
		return nil, false, invalid("refresh_margin must be below %s", maxRefreshMargin)
	case cfg.RequestTimeout <= 0:
		return nil, false, invalid("request_timeout must be a positive duration of at least 1s, such as 10s")
	case cfg.RequestTimeout > maxRequestTimeout:
		return nil, false, invalid("request_timeout must be at most %s, to stay well under Vault's request timeout", maxRequestTimeout)
	case cfg.Password != "" && cfg.Username == "":
		return nil, false, invalid("password needs a username")
	}
	if _, err := certPool(cfg.CACert); err != nil {
		return nil, false, &inputError{err}
	}

	// A session belongs to the account it was started for, reached under the
	// CAs trusted then: a new ca_cert changes who can answer for base_url's
	// host as surely as a new base_url does. So a stored password, and the
	// session, are never sent to another account, nor under another CA,
	// than the one the write that brought them named.
	newAccount := cfg.identity() != old.identity() || cfg.CACert != old.CACert
	if newAccount && !credential && !passwordSent && seed == "" {
		return nil, false, invalid("changing base_url, username, account_id or ca_cert needs password (or refresh_token) in the same write: a stored password is never sent to another account, nor under a CA it was not written with")
	}
	if newAccount && !passwordSent {
		cfg.Password = "" // the old account's: never sent to the new one
	}
	credential = credential || passwordSent || seed != "" || newAccount
	if credential && seed == "" && (cfg.Username == "" || cfg.Password == "") {
		return nil, false, invalid("username and password are required to log in (or give refresh_token to seed an existing session)")
	}
	if seed != "" || newAccount {
		// The session is the old account's (or CA's), or replaced by the one given.
		r.Token, r.Lifetime, r.ObtainedAt, r.RefreshTokenExpiresAt, r.RefreshToken = "", 0, time.Time{}, time.Time{}, seed
	}
	if credential {
		r.State, r.InFlightAt = stateNeedLogin, time.Time{}
		if seed != "" {
			r.State = stateReady
		}
	}
	return r, credential, nil
}

// parseBaseURL checks that raw is an https URL, or http on a loopback host,
// and returns it without a trailing slash.
func parseBaseURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return "", invalid("base_url must be an absolute URL such as https://api.teletracker.net")
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", invalid("base_url must not hold credentials, a query or a fragment")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if ip := net.ParseIP(u.Hostname()); !strings.EqualFold(u.Hostname(), "localhost") && (ip == nil || !ip.IsLoopback()) {
			return "", invalid("base_url must use https://; http:// is only accepted for loopback hosts (127.0.0.0/8, ::1, localhost)")
		}
	default:
		return "", invalid("base_url must use https://")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

const pathConfigHelpSyn = `Configure the Teletracker account whose session this mount keeps alive.`

const pathConfigHelpDesc = `
Writing username and password logs in to Teletracker at once; writing
refresh_token instead seeds an existing session (it is spent at once for a new
one). The write fails, and changes nothing, when Teletracker refuses.

A write is a partial update: fields not sent keep their values. Changing
base_url, username, account_id or ca_cert (setting, changing or removing it:
it says whom the engine trusts to be Teletracker) starts a new session, so the
same write must bring password (or refresh_token): a stored password is never
sent to another account, nor under a CA it was not written with.

password and refresh_token are never returned; a read shows password_set.
Deleting the config also deletes the session.
`

const pathAccountHelpSyn = `Configure a named Teletracker account of this mount.`

const pathAccountHelpDesc = `
A mount holds its default account (config, token, rotate, status) and any
number of named ones, each a session of its own with the same fields, rules
and answers: accounts/<name> is its config, token/<name> its token,
rotate/<name> and status/<name> the rest. LIST accounts/ names them, with
each one's state, expires_at and consecutive_failures in key_info.

Names are 1 to 64 characters of a-z, 0-9, - and _, starting with a letter or
digit. An unknown name is a 404 on every path.

Writing username and password logs in to Teletracker at once; writing
refresh_token instead seeds an existing session. The write fails, and
changes nothing, when Teletracker refuses. A write is a partial update.
Deleting the account deletes its config and session.
`
