package teletracker

// capacity.go says whether the plugin process's call budget can keep every
// session of every mount alive: each account needs a call per rotation,
// and the turns give 0.9 of the budget a second. When the accounts need
// more, some reach servedUntil before a turn comes; status, the metrics and
// the log say so before that happens.

// setNeed sets a's share of what the process needs, from r. Under refreshMu.
func (a *account) setNeed(r *record) {
	need := 0.0
	if r.configured() && !r.needsReauth() && a.m.life.Err() == nil { // a mount Clean ended needs none
		if tl := r.timeline(); tl.held {
			next := tl.replaceFrom
			if !tl.renewFrom.IsZero() {
				next = earlier(next, tl.renewFrom)
			}
			need = 1 / max(next.Sub(tl.obtained), tickInterval).Seconds()
		}
	}
	if need != a.need {
		a.m.proc.addNeed(a.m, need-a.need)
		a.need = need
	}
}

// addNeed adds delta calls a second to what the process needs; a mount's
// logger says so when that crosses the budget.
func (p *process) addNeed(b *backend, delta float64) {
	p.mu.Lock()
	before := p.needed
	p.needed = max(p.needed+delta, 0)
	after, budget := p.needed, p.turns()
	p.mu.Unlock()
	switch {
	case before <= budget && after > budget:
		b.Logger().Warn("the accounts of this plugin process need more calls a second than its budget gives: some will reach expiry before they are refreshed; raise -calls-per-second if Teletracker allows, or spread the accounts over more Vault clusters",
			"needed", after, "budget", budget)
	case before > budget && after <= budget:
		b.Logger().Info("the accounts of this plugin process need no more calls a second than its budget gives", "needed", after, "budget", budget)
	}
}

// turns is the calls a second the pacer's turns give.
func (p *process) turns() float64 {
	return p.budget * turnShare
}

// capacity is the calls a second the process needs, and its turns give.
func (p *process) capacity() (needed, budget float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.needed, p.turns()
}
