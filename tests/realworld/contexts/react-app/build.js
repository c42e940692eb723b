// The app's build script: writes the static site nginx serves into build/.
const fs = require("fs");
const { page } = require("./page");
fs.mkdirSync("build/static", { recursive: true });
fs.writeFileSync("build/index.html", page());
fs.writeFileSync("build/static/app.css", "body { font-family: sans-serif; }\n");
