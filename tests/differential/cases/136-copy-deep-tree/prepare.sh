mkdir -p a/b/c/d/e/f/g/h/i/j && echo deep > a/b/c/d/e/f/g/h/i/j/leaf
