// The one page of the app.
exports.page = () => "<!doctype html><html><head><title>app</title></head><body>hello</body></html>\n";
