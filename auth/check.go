package auth

// Check validates the parameters of a key to create, as Create does,
// without storing anything and without looking the subaccount up: for a
// caller that creates the key's subaccount first (subaccounts.Service).
func (m *Manager) Check(p CreateParams) error {
	_, _, _, err := checkCreate(p)
	return err
}
