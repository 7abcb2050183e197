package bench

// Ratio is one target's reads/s against another's at one concurrency, as
// load throughput -ratio-json writes it and scale report reads it.
type Ratio struct {
	Clients int `json:"clients"`
	// First and Second are the targets' median reads/s over rounds.
	First  float64 `json:"first"`
	Second float64 `json:"second"`
	// Ratio is the median of the per-round ratios, Q1 and Q3 their quartiles.
	Ratio float64 `json:"ratio"`
	Q1    float64 `json:"q1"`
	Q3    float64 `json:"q3"`
	// The targets' median CPU time per read, in µs, of Vault and of each
	// target's plugin process: where a difference in reads/s comes from.
	FirstVaultUs   float64 `json:"first_vault_us"`
	SecondVaultUs  float64 `json:"second_vault_us"`
	FirstPluginUs  float64 `json:"first_plugin_us"`
	SecondPluginUs float64 `json:"second_plugin_us"`
}
