chmod 700 src/sub && chmod 777 src/open && chmod 750 src
