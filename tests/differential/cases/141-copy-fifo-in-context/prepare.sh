mkfifo pipe && echo r > regular
