python3 -c "import os; os.setxattr(\"x.txt\", \"user.kiln\", b\"value\")"
