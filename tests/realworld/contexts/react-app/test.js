// The app's test script: checks that the page the build writes names the app.
const assert = require("assert");
const { page } = require("./page");
assert.match(page(), /<title>app<\/title>/);
console.log("1 test passed");
