mkdir -p empty/nested && mkdir e2
